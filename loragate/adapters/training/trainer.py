"""The training run: rows to examples, peft LoRA under transformers' Trainer, a bundle out.

torch, transformers and peft are imported inside the functions: `loragate --help` and the
client package stay light, and these live in the `train` extra.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loragate.adapters.manifest import PersonaManifest
from loragate.adapters.training.bundle import CHAT_TEMPLATE_FILE, next_version, publish_bundle
from loragate.adapters.training.dataset import LoadedDataset, load_dataset
from loragate.adapters.training.formatting import TrainingExample, end_of_turn_ids, format_example
from loragate.adapters.training.recipe import TrainSettings
from loragate.adapters.training.remote import fetch_data_set


class TrainingError(RuntimeError):
    pass


@dataclass
class Examples:
    train: list[TrainingExample]
    held_out: list[TrainingExample]
    too_long: int


@dataclass
class TrainResult:
    bundle_dir: Path
    manifest: PersonaManifest


def resolve_base_model(base_model: str | None) -> tuple[str, str]:
    """(what from_pretrained loads, the name the gateway serves it under)."""
    if base_model is None:
        from loragate.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        return str(ensure_default_model()), DEFAULT_MODEL_NAME
    return base_model, Path(base_model).name


def build_examples(tokenizer: Any, data: LoadedDataset, settings: TrainSettings) -> Examples:
    eot = end_of_turn_ids(tokenizer)
    formatted = [
        format_example(
            tokenizer,
            row,
            system_prompt=settings.system_prompt,
            max_length=settings.max_length,
            end_of_turn=eot,
        )
        for row in data.rows
    ]
    usable = [e for e in formatted if e is not None]
    if not usable:
        raise TrainingError(f"every prompt is longer than --max-length {settings.max_length}")
    held_out_count = round(len(usable) * settings.eval_fraction)
    if settings.eval_fraction and not 0 < held_out_count < len(usable):
        raise TrainingError(
            f"--eval-fraction {settings.eval_fraction} of {len(usable)} rows leaves "
            f"{held_out_count} held out: use more rows or another fraction"
        )
    order = list(range(len(usable)))
    random.Random(settings.seed).shuffle(order)
    held = set(order[:held_out_count])
    return Examples(
        train=[e for i, e in enumerate(usable) if i not in held],
        held_out=[e for i, e in enumerate(usable) if i in held],
        too_long=len(formatted) - len(usable),
    )


def use_bf16(precision: str) -> bool:
    import torch

    if precision == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return precision == "bf16"


def load_peft_model(model_path: str, settings: TrainSettings, bf16: bool) -> Any:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    # bf16 weights on a bf16 GPU, as the tutorial loads the 8B model; fp32 otherwise (the CPU).
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False  # the KV cache is useless in training, and fights checkpointing
    if settings.gradient_checkpointing:
        # The tutorial's requirement for gradient checkpointing under LoRA (frozen embeddings).
        model.enable_input_require_grads()  # type: ignore[no-untyped-call]
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        target_modules=settings.target_modules,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        inference_mode=False,
    )
    return get_peft_model(model, config)


def training_arguments(settings: TrainSettings, bf16: bool, has_eval: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(settings.checkpoints),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_steps=settings.save_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=settings.save_steps if has_eval else None,
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=settings.seed,
        report_to="none",
        disable_tqdm=False,
    )


def last_checkpoint(directory: Path) -> Path | None:
    """The highest-step complete checkpoint (Trainer writes trainer_state.json last)."""
    done = [p for p in directory.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    steps = [(int(p.name.removeprefix("checkpoint-")), p) for p in done if p.name[11:].isdigit()]
    return max(steps)[1] if steps else None


def _checkpoint_to_resume(settings: TrainSettings) -> str | None:
    directory = settings.checkpoints
    if settings.resume:
        last = last_checkpoint(directory)
        if last is None:
            raise TrainingError(f"--resume: no checkpoint in {directory} to resume from")
        print(f"Resuming from {last}")
        return str(last)
    stale = sorted(directory.glob("checkpoint-*")) if directory.is_dir() else []
    if stale:
        print(f"Starting afresh: removing {len(stale)} earlier checkpoint(s) in {directory}")
        for path in stale:
            shutil.rmtree(path)
    return None


def load_training_data(settings: TrainSettings) -> LoadedDataset:
    """The rows of --data: a local file, or a URL's copy in the cache (downloaded on first use)."""
    path = fetch_data_set(settings.data_url) if settings.data_url else settings.data_path
    return load_dataset(path, skip_bad_rows=settings.skip_bad_rows, max_rows=settings.max_rows)


def train_persona(settings: TrainSettings) -> TrainResult:
    started = time.monotonic()
    data = load_training_data(settings)
    for problem in data.skipped:
        print(f"Skipping {problem}")
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer  # after data checks

    model_path, base_name = resolve_base_model(settings.base_model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = settings.chat_template.read_text() if settings.chat_template else None
    if template is not None:  # rendered as the gateway will: loragate.prompting, this template
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:  # Llama-3.1 has none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    examples = build_examples(tokenizer, data, settings)
    resume_from = _checkpoint_to_resume(settings)
    bf16 = use_bf16(settings.precision)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    model = load_peft_model(model_path, settings, bf16)
    model.print_trainable_parameters()
    trainer = Trainer(
        model=model,
        args=training_arguments(settings, bf16, has_eval=bool(examples.held_out)),
        train_dataset=examples.train,
        eval_dataset=examples.held_out or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True),
    )
    outcome = trainer.train(resume_from_checkpoint=resume_from)
    eval_loss = trainer.evaluate()["eval_loss"] if examples.held_out else None
    training = _training_metadata(settings, data, examples, trainer.state, outcome, bf16)
    training.update(seconds=round(time.monotonic() - started, 1))
    if eval_loss is not None:
        training["eval_loss"] = round(float(eval_loss), 4)
    manifest = PersonaManifest(
        name=settings.persona_name,
        version=settings.version or next_version(settings.bundle_dir),
        description=settings.description,
        base_model=base_name,
        system_prompt=settings.system_prompt,
        chat_template=CHAT_TEMPLATE_FILE if template is not None else None,
        training=training,
    )
    bundle = publish_bundle(
        settings.bundle_dir, manifest, model.save_pretrained, {CHAT_TEMPLATE_FILE: template}
    )
    return TrainResult(bundle, manifest)


def _training_metadata(
    settings: TrainSettings,
    data: LoadedDataset,
    examples: Examples,
    state: Any,
    outcome: Any,
    bf16: bool,
) -> dict[str, Any]:
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return {
        "data_file": settings.data_file_name,
        "data_url": settings.data_url,  # None (left out of the manifest) for a local file
        "data_sha256": data.sha256,
        "rows": len(examples.train),
        "eval_rows": len(examples.held_out),
        "skipped_rows": len(data.skipped),
        "too_long_rows": examples.too_long,
        "steps": int(state.global_step),
        "epochs": round(float(state.epoch or 0.0), 3),
        "final_loss": round(float(losses[-1]), 4) if losses else None,
        "mean_loss": round(float(outcome.training_loss), 4),
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "gradient_accumulation": settings.gradient_accumulation,
        "lora_r": settings.lora_r,
        "lora_alpha": settings.lora_alpha,
        "lora_dropout": settings.lora_dropout,
        "target_modules": settings.target_modules,
        "max_length": settings.max_length,
        "precision": "bf16" if bf16 else "fp32",
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
