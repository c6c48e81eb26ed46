"""LangChain on a loragate gateway (needs the `clients` extra).

`gateway_chat_model(persona)` is a `ChatOpenAI` (invoke, stream, batch, bind_tools,
with_structured_output, by JSON schema or `method="function_calling"`) whose persona is chosen
per instance, or per call with `persona=`; the gateway serves OpenAI's tool calling, so
`bind_tools(tools, tool_choice=<a tool's name> | "any" | "auto")` is ChatOpenAI's own.

`GatewayLLM` is the tutorial's LangChain `LLM` class (`llm.invoke("你好")`), now a thin HTTP
client instead of a model loaded into the caller's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk
from langchain_openai import ChatOpenAI
from pydantic import PrivateAttr, SecretStr

from loragate.clients.openai_client import gateway_client, gateway_settings, served_base_model

TUTORIAL_SYSTEM_PROMPT = "You are a helpful assistant."


class GatewayChatModel(ChatOpenAI):
    """`ChatOpenAI` whose calls also take `persona="name"` (or "name@version") to pick a persona."""

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        persona = kwargs.pop("persona", None)
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        if persona is not None:
            payload["model"] = persona
        return payload


def gateway_chat_model(
    persona: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    **options: Any,
) -> GatewayChatModel:
    """A chat model on the gateway; without a persona, the base model (asked of the gateway).

    `options` go to ChatOpenAI: temperature, max_tokens, streaming, timeout, max_retries...
    """
    settings = gateway_settings(base_url, api_key)
    model = persona or served_base_model(gateway_client(settings.base_url, settings.api_key))
    return GatewayChatModel(
        model=model,
        base_url=settings.base_url,
        api_key=SecretStr(settings.key()),
        # The gateway speaks Chat Completions; never let LangChain switch to the Responses API.
        use_responses_api=False,
        # LangChain only asks for usage in streams on api.openai.com; the gateway reports it too.
        stream_usage=True,
        **options,
    )


class GatewayLLM(LLM):
    """The tutorial's `LLaMA3_1_LLM`, served by the gateway: `GatewayLLM(persona="x")("你好")`.

    Like the tutorial, each call is one user turn under a system prompt: the persona's own when
    it has one, else the tutorial's "You are a helpful assistant.".
    """

    persona: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    system_prompt: str | None = None
    max_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    timeout: float = 600.0

    _client: openai.OpenAI | None = PrivateAttr(default=None)
    _model: str | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "loragate"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"persona": self.persona, "base_url": self.base_url, "max_tokens": self.max_tokens}

    def _gateway(self) -> tuple[openai.OpenAI, str]:
        if self._client is None:
            self._client = gateway_client(self.base_url, self.api_key, timeout=self.timeout)
        if self._model is None:
            self._model = self.persona or served_base_model(self._client)
        return self._client, self._model

    def _request(self, prompt: str, stop: list[str] | None, **kwargs: Any) -> dict[str, Any]:
        _, model = self._gateway()
        messages = [{"role": "user", "content": prompt}]
        system = self.system_prompt or (None if self.persona else TUTORIAL_SYSTEM_PROMPT)
        if system:
            messages.insert(0, {"role": "system", "content": system})
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stop,
        }
        request.update(kwargs)
        return {k: v for k, v in request.items() if v is not None}

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,  # noqa: ARG002 (one final text)
        **kwargs: Any,
    ) -> str:
        client, _ = self._gateway()
        reply = client.chat.completions.create(**self._request(prompt, stop, **kwargs))
        return reply.choices[0].message.content or ""

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        client, _ = self._gateway()
        stream = client.chat.completions.create(
            **self._request(prompt, stop, **kwargs), stream=True
        )
        with stream:
            for event in stream:
                text = event.choices[0].delta.content if event.choices else None
                if not text:
                    continue
                chunk = GenerationChunk(text=text)
                if run_manager is not None:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk


# The tutorial's name for its class, so that its `from LLM import LLaMA3_1_LLM` code ports as is.
LLaMA3_1_LLM = GatewayLLM
