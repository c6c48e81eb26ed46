"""What a run measures: the full plan behind the committed results, and a quick one."""

from __future__ import annotations

from dataclasses import dataclass

BASE = "base"
PERSONA = "persona"
MIX4 = "mix4"
MIX8 = "mix8"
WORKLOAD_TITLES = {
    BASE: "base model",
    PERSONA: "one persona",
    MIX4: "4 personas mixed",
    MIX8: "8 personas mixed",
}
PERSONA_COUNTS = {BASE: 0, PERSONA: 1, MIX4: 4, MIX8: 8}


@dataclass(frozen=True)
class Plan:
    name: str
    concurrencies: tuple[int, ...]
    workloads: tuple[str, ...]
    input_tokens: int  # the user message, in the model's tokens
    output_tokens: int  # every request: ignore_eos with this many max tokens
    waves: int  # requests per level: waves x concurrency, within [min_requests, max_requests]
    min_requests: int
    max_requests: int
    persona_waves: int  # the same for persona workloads, whose decode steps are 2-3x slower here
    persona_min_requests: int
    base_passes: int  # 2: base-model levels run loragate, vLLM, vLLM, loragate (ABBA)
    tutorial_requests: dict[int, int]  # concurrency -> requests, for the slow tutorial server
    cold_trials: int  # cold personas whose first request is timed against a warm one
    overhead_concurrencies: tuple[int, ...]
    overhead_seconds: int  # each wrk run
    overhead_reply_tokens: int

    def requests_at(self, concurrency: int, workload: str = BASE) -> int:
        if workload == BASE:
            waves, least = self.waves, self.min_requests
        else:
            waves, least = self.persona_waves, self.persona_min_requests
        return max(least, min(self.max_requests, waves * concurrency))

    @property
    def personas_needed(self) -> int:
        return max(PERSONA_COUNTS[w] for w in self.workloads)


FULL = Plan(
    name="full",
    concurrencies=(1, 4, 16, 64),
    workloads=(BASE, PERSONA, MIX4, MIX8),
    input_tokens=128,
    output_tokens=128,
    waves=2,
    min_requests=8,
    max_requests=64,
    persona_waves=1,
    persona_min_requests=4,
    base_passes=2,
    tutorial_requests={1: 4, 16: 16},
    cold_trials=5,
    overhead_concurrencies=(1, 64),
    overhead_seconds=15,
    overhead_reply_tokens=16,
)

QUICK = Plan(
    name="quick",
    concurrencies=(1, 16),
    workloads=(BASE, PERSONA, MIX8),
    input_tokens=64,
    output_tokens=32,
    waves=1,
    min_requests=4,
    max_requests=16,
    persona_waves=1,
    persona_min_requests=4,
    base_passes=1,
    tutorial_requests={1: 2, 16: 16},
    cold_trials=2,
    overhead_concurrencies=(1, 64),
    overhead_seconds=4,
    overhead_reply_tokens=16,
)
