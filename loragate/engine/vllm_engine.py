"""The production engine: vLLM's AsyncLLM, behind the engine protocol.

vLLM is imported here, with this module, never inside a function: a module imported for the
first time can keep the frames of the stack that imported it alive for good (e.g.
vllm.multimodal.media.audio keeps torchcodec's ImportError, and with its traceback every frame
above it), and a frame of `VllmEngine.start` holding the first AsyncLLM kept that engine, its
tokenizer and its processors in memory after every restart. Callers import this module lazily.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from vllm.exceptions import VLLMClientError
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

from loragate.engine.engine_args import build_engine_args, detect_platform, server_usage_context
from loragate.engine.environment import engine_environment
from loragate.engine.protocol import (
    ChatTokenizer,
    EngineDeadError,
    EngineRequestError,
    RequestAbortedError,
    longest_token_chars,
)
from loragate.engine.types import (
    AdapterRef,
    ChoiceDelta,
    FinishReason,
    GenerationUpdate,
    SamplingOptions,
    TokenLogprob,
)
from loragate.settings import EngineSettings

logger = logging.getLogger(__name__)

# Raised by vLLM's request validation (SamplingParams.verify, the input processor) for a
# request it refuses: bad structured-output grammars, out-of-vocabulary ids, values it cannot
# serialise. vLLM's own server answers them with 400 too.
REQUEST_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError)


class VllmEngine:
    def __init__(self, llm: AsyncLLM, max_model_len: int, max_lora_rank: int):
        self._llm = llm
        self._tokenizer: ChatTokenizer = llm.get_tokenizer()  # type: ignore[assignment]
        self._max_model_len = max_model_len
        self._max_lora_rank = max_lora_rank
        self._vocab_size = int(llm.model_config.get_vocab_size())
        # Resolved by vLLM (its OpenAI server's default for the device, unless set).
        self._max_num_seqs = int(llm.vllm_config.scheduler_config.max_num_seqs)
        # The config vLLM loaded (from the hub, ModelScope or a directory): no second lookup.
        self._hf_config: dict[str, Any] = llm.model_config.hf_text_config.to_dict()
        self._max_token_chars = longest_token_chars(self._tokenizer)

    @classmethod
    def start(cls, settings: EngineSettings, model_path: str, served_name: str) -> VllmEngine:
        platform = detect_platform()
        os.environ.update(engine_environment(settings, platform))  # read by vLLM's processes
        args = build_engine_args(settings, model_path, served_name, platform)
        llm = AsyncLLM.from_engine_args(args, usage_context=server_usage_context())
        max_len = int(llm.model_config.max_model_len)
        return cls(llm, max_len, settings.max_lora_rank)

    @property
    def tokenizer(self) -> ChatTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def max_lora_rank(self) -> int:
        return self._max_lora_rank

    @property
    def max_num_seqs(self) -> int:
        return self._max_num_seqs

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def hf_config(self) -> Mapping[str, Any]:
        return self._hf_config

    @property
    def max_token_chars(self) -> int:
        return self._max_token_chars

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[GenerationUpdate, None]:
        params = _sampling_params(options, self._vocab_size)
        finished = False
        first = True
        try:
            stream = self._llm.generate(
                TokensPrompt(prompt_token_ids=prompt_token_ids),
                params,
                request_id,
                lora_request=_lora_request(adapter),
            )
            async for output in stream:
                finished = output.finished
                if finished and any(c.finish_reason == "abort" for c in output.outputs):
                    # An abort ends vLLM's stream like a finish: not a whole reply, though.
                    raise RequestAbortedError("the engine aborted the request")
                yield _update(output, first, options)
                first = False
        except VllmDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except VLLMClientError as exc:
            raise EngineRequestError(str(exc), getattr(exc, "parameter", None)) from exc
        except REQUEST_ERRORS as exc:
            if not first:  # not a refusal of the request: a failure while serving it
                raise
            raise EngineRequestError(str(exc)) from exc
        finally:
            if not finished:
                await self._llm.abort(request_id)

    def check_options(self, options: SamplingOptions) -> None:
        """vLLM's own validation of the request's parameters (the checks its input processor
        makes when the request is added), so a refusal is a 400 before any stream starts."""
        try:
            params = _sampling_params(options, self._vocab_size)
            config = self._llm.vllm_config
            params.verify(
                config.model_config,
                config.speculative_config,
                config.structured_outputs_config,
                self._llm.get_tokenizer(),
            )
        except VLLMClientError as exc:
            raise EngineRequestError(str(exc), getattr(exc, "parameter", None)) from exc
        except REQUEST_ERRORS as exc:
            raise EngineRequestError(str(exc)) from exc

    def generation_defaults(self) -> dict[str, float]:
        """Sampling defaults from the model's generation_config.json, as vLLM's server applies."""
        values = self._llm.model_config.get_diff_sampling_param()
        return {k: v for k, v in values.items() if isinstance(v, int | float)}

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        lora = _lora_request(adapter)
        if not await self._llm.add_lora(lora):
            raise RuntimeError(f"the engine refused adapter '{adapter.name}'")

    async def remove_adapter(self, int_id: int) -> None:
        await self._llm.remove_lora(int_id)

    async def loaded_adapter_ids(self) -> set[int]:
        return set().union(*await self.adapter_ids_by_replica())

    async def adapter_ids_by_replica(self) -> list[set[int]]:
        # AsyncLLM.list_loras asks only the first data-parallel replica; adds and removes go to
        # every one (vLLM's DP client broadcasts them), so every one is asked here.
        core = self._llm.engine_core
        ask_all = getattr(core, "call_utility_all_async", None)
        if ask_all is None:
            return [set(await self._llm.list_loras())]
        return [set(ids) for ids in await ask_all("list_loras")]

    def num_unfinished_requests(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    async def check_health(self) -> None:
        if self._llm.errored:
            raise EngineDeadError(str(self._llm.dead_error))

    async def shutdown(self) -> None:
        self._llm.shutdown()


def _lora_request(adapter: AdapterRef | None) -> Any:
    if adapter is None:
        return None
    return LoRARequest(adapter.name, adapter.int_id, adapter.path)


def _structured_outputs(options: SamplingOptions) -> Any:
    constraints: dict[str, Any] = {
        "json": options.json_schema,
        "json_object": options.json_object or None,
        "regex": options.regex,
        "choice": list(options.choice) if options.choice else None,
        "grammar": options.grammar,
    }
    given = {key: value for key, value in constraints.items() if value is not None}
    if not given:
        return None
    return StructuredOutputsParams(**given, disable_any_whitespace=options.compact_json)


def _sampling_params(options: SamplingOptions, vocab_size: int) -> Any:
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        # A top_k over the vocabulary keeps every token: "off", which the sampler takes safely.
        top_k=0 if options.top_k >= vocab_size else options.top_k,
        min_p=options.min_p,
        seed=options.seed,
        stop=list(options.stop) or None,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        repetition_penalty=options.repetition_penalty,
        ignore_eos=options.ignore_eos,
        min_tokens=options.min_tokens,
        logprobs=options.logprobs,
        prompt_logprobs=options.prompt_logprobs,
        logit_bias=options.logit_bias,
        structured_outputs=_structured_outputs(options),
        output_kind=RequestOutputKind.DELTA,
    )


def _update(output: Any, first: bool, options: SamplingOptions) -> GenerationUpdate:
    choices = [
        ChoiceDelta(
            index=choice.index,
            text=choice.text,
            token_ids=list(choice.token_ids),
            logprobs=_logprobs(choice.token_ids, choice.logprobs, options.logprobs),
            finish_reason=_finish_reason(choice.finish_reason),
            # vLLM's stop_reason: the matched stop string, a stop token's id, or None.
            stop_sequence=choice.stop_reason if isinstance(choice.stop_reason, str) else None,
        )
        for choice in output.outputs
    ]
    prompt_logprobs = None
    if first and options.prompt_logprobs is not None and output.prompt_logprobs is not None:
        prompt_logprobs = [
            _token_logprob(tid, entry, options.prompt_logprobs) if entry else None
            for tid, entry in zip(output.prompt_token_ids, output.prompt_logprobs, strict=True)
        ]
    return GenerationUpdate(
        prompt_token_ids=list(output.prompt_token_ids or []),
        choices=choices,
        prompt_logprobs=prompt_logprobs,
        finished=bool(output.finished),
        queue_time_s=_queue_time(output),
    )


def _queue_time(output: Any) -> float | None:
    # vLLM's RequestStateStats (with log stats on): engine-core timestamps, 0 until reached.
    stats = getattr(output, "metrics", None)
    queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
    if not queued or not scheduled:
        return None
    return max(0.0, float(scheduled) - float(queued))


def _finish_reason(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _logprobs(token_ids: Any, entries: Any, top_n: int | None) -> list[TokenLogprob] | None:
    if entries is None or top_n is None:
        return None
    # Each new token comes with {token_id: Logprob} holding it and the top-n alternatives.
    return [
        _token_logprob(tid, entry, top_n) for tid, entry in zip(token_ids, entries, strict=True)
    ]


def _token_logprob(token_id: int, entry: Any, top_n: int) -> TokenLogprob:
    chosen = entry[token_id]
    ranked = sorted(entry.items(), key=lambda kv: kv[1].rank or 0)
    top = tuple(
        (lp.decoded_token or "", float(lp.logprob))
        for _, lp in ranked
        if lp.rank is not None and lp.rank <= top_n
    )
    return TokenLogprob(
        token=chosen.decoded_token or "",
        token_id=token_id,
        logprob=float(chosen.logprob),
        top=top,
    )
