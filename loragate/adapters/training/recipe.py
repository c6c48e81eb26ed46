"""`loragate train` settings: the Llama-3.1 tutorial's LoRA recipe as overridable defaults.

A pydantic-settings class like the server's, so that each field is a `--flag` (through
`loragate.cli_settings`) and a `LORAGATE_TRAIN_<NAME>` environment variable, with its
description as the help text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loragate.adapters.manifest import LORA_TARGET_MODULES
from loragate.adapters.training.remote import cached_data_path, is_url, url_file_name


class TrainSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAGATE_TRAIN_", extra="ignore")

    data: Path | str | None = Field(
        default=None,
        description="(required) JSON or JSONL rows of instruction/input/output, optionally "
        "with system and history: a local file, or an http(s) URL downloaded once into the "
        "cache (~/.cache/loragate/data) and reused from there.",
    )
    name: str | None = Field(
        default=None, description="Persona name. Default: the data file's name without suffix."
    )
    output: Path | None = Field(
        default=None,
        description="Bundle directory to write (replaced atomically). Default: ./personas/NAME.",
    )
    base_model: str | None = Field(
        default=None,
        description="Base model directory or hub id. Default: the embedded SmolLM2-135M-Instruct.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="The persona's system prompt: trained with, and served with by the gateway.",
    )
    description: str = Field(default="", description="The persona's description.")
    chat_template: Path | None = Field(
        default=None,
        description="A Jinja chat template to train with instead of the model's own: the bundle "
        "carries it, and the gateway serves the persona with it.",
    )
    version: str | None = Field(
        default=None,
        description="Bundle version. Default: one more than the bundle at --output, else 1.",
    )
    max_length: int = Field(default=384, ge=8, description="Tokens per example; longer are cut.")
    lora_r: int = Field(default=8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA alpha (scale alpha/r).")
    lora_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGET_MODULES),
        description="Modules to adapt (repeat the flag, or comma-separate). Default: "
        + ",".join(LORA_TARGET_MODULES),
    )
    batch_size: int = Field(default=4, ge=1, description="Examples per device per step.")
    gradient_accumulation: int = Field(
        default=4, ge=1, description="Batches accumulated per optimizer step."
    )
    epochs: float = Field(default=3.0, gt=0.0, description="Passes over the training rows.")
    learning_rate: float = Field(default=1e-4, gt=0.0, description="Peak learning rate.")
    gradient_checkpointing: bool = Field(
        default=True, description="Recompute activations in backward to save memory."
    )
    save_steps: int = Field(default=100, ge=1, description="Checkpoint every this many steps.")
    logging_steps: int = Field(default=10, ge=1, description="Log the loss every this many steps.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (beats --epochs)."
    )
    max_rows: int | None = Field(
        default=None, ge=1, description="Use only the first this many good rows."
    )
    eval_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Hold out this fraction of rows for eval loss."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch. Default: torch's choice (all cores); 1 is faster "
        "when other processes keep the cores busy.",
    )
    seed: int = Field(default=42, description="Seed of the split, the LoRA init and shuffling.")
    skip_bad_rows: bool = Field(default=False, description="Skip bad rows instead of stopping.")
    resume: bool = Field(
        default=False, description="Resume from the last checkpoint in --checkpoint-dir."
    )
    checkpoint_dir: Path | None = Field(
        default=None,
        description="Where checkpoints go. Default: ~/.cache/loragate/training/NAME.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="auto: bf16 mixed precision where the hardware has it (a bf16 GPU), else fp32.",
    )

    @field_validator("data", mode="before")
    @classmethod
    def _path_or_url(cls, value: object) -> object:
        # A URL stays a string (a Path would fold its `//`); anything else is a local path.
        if isinstance(value, str) and value:
            return value if is_url(value) else Path(value)
        return value

    @model_validator(mode="after")
    def _require_data(self) -> TrainSettings:
        if self.data is None or self.data == "":
            raise ValueError("--data is required: the instruction data set to train on")
        if (
            self.data_url is not None
            and not self.name
            and not Path(url_file_name(self.data_url)).stem
        ):
            raise ValueError(f"--data {self.data_url} names no file: give the persona a --name")
        return self

    @model_validator(mode="after")
    def _split_modules(self) -> TrainSettings:
        self.target_modules = [m for item in self.target_modules for m in item.split(",") if m]
        return self

    @property
    def data_url(self) -> str | None:
        """The URL given to --data, or None for a local file."""
        return self.data if isinstance(self.data, str) else None

    @property
    def data_path(self) -> Path:
        """The local file given to --data, or where a URL's download is (or will be) cached."""
        assert self.data is not None  # checked by _require_data
        return cached_data_path(self.data) if isinstance(self.data, str) else self.data

    @property
    def data_file_name(self) -> str:
        """The data set's own file name: the local file's, or the last segment of the URL."""
        return url_file_name(self.data) if isinstance(self.data, str) else self.data_path.name

    @property
    def persona_name(self) -> str:
        return self.name or Path(self.data_file_name).stem

    @property
    def bundle_dir(self) -> Path:
        return self.output or Path("personas") / self.persona_name

    @property
    def checkpoints(self) -> Path:
        from loragate.paths import cache_dir

        return self.checkpoint_dir or cache_dir() / "training" / self.persona_name
