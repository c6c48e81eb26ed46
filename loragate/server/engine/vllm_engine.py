"""The production engine: vLLM's AsyncLLM, behind the engine protocol."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from loragate.server.engine.protocol import ChatTokenizer, EngineDeadError, EngineRequestError
from loragate.server.engine.types import (
    AdapterRef,
    ChoiceDelta,
    FinishReason,
    GenerationUpdate,
    SamplingOptions,
    TokenLogprob,
)
from loragate.settings import RESERVED_CPU_ENV, EngineSettings

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


def build_engine_args(settings: EngineSettings, model_path: str, served_name: str) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model_path,
        served_model_name=[served_name],
        max_model_len=settings.max_model_len,
        dtype=settings.dtype,
        gpu_memory_utilization=settings.kv_cache_memory_fraction,
        tensor_parallel_size=settings.tensor_parallel_size,
        enable_lora=settings.enable_lora,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,  # type: ignore[arg-type]  # validated by vLLM
        max_cpu_loras=settings.max_cpu_loras,
        max_num_seqs=settings.max_num_seqs,
        seed=settings.seed,
        enforce_eager=settings.enforce_eager,
    )


def engine_environment(settings: EngineSettings) -> dict[str, str]:
    """vLLM settings that only its environment variables carry."""
    reserved = settings.resolved_cpu_reserved_cores()
    return {} if reserved is None else {RESERVED_CPU_ENV: str(reserved)}


class VllmEngine:
    def __init__(self, llm: AsyncLLM, max_model_len: int, max_lora_rank: int):
        self._llm = llm
        self._tokenizer: ChatTokenizer = llm.get_tokenizer()  # type: ignore[assignment]
        self._max_model_len = max_model_len
        self._max_lora_rank = max_lora_rank

    @classmethod
    def start(cls, settings: EngineSettings, model_path: str, served_name: str) -> VllmEngine:
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.update(engine_environment(settings))  # read by the processes vLLM spawns
        llm = AsyncLLM.from_engine_args(build_engine_args(settings, model_path, served_name))
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

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[GenerationUpdate, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

        params = self._checked_params(options)
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
                yield _update(output, first, options)
                first = False
        except VllmDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except VLLMClientError as exc:
            raise EngineRequestError(str(exc), getattr(exc, "parameter", None)) from exc
        finally:
            if not finished:
                await self._llm.abort(request_id)

    def check_options(self, options: SamplingOptions) -> None:
        self._checked_params(options)

    def _checked_params(self, options: SamplingOptions) -> Any:
        from vllm.exceptions import VLLMClientError

        try:
            return _sampling_params(options)
        except VLLMClientError as exc:
            raise EngineRequestError(str(exc), getattr(exc, "parameter", None)) from exc

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
        return set(await self._llm.list_loras())

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
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.int_id, adapter.path)


def _sampling_params(options: SamplingOptions) -> Any:
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = None
    if options.json_schema is not None:
        structured = StructuredOutputsParams(json=options.json_schema)
    elif options.json_object:
        structured = StructuredOutputsParams(json_object=True)
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
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
        structured_outputs=structured,
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
    )


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
