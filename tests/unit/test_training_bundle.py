"""Publishing a trained adapter as a bundle the gateway reads, replacing the old one whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from loragate.adapters.manifest import LORA_TARGET_MODULES, PersonaManifest, read_bundle
from loragate.adapters.training.bundle import next_version, publish_bundle
from loragate.adapters.training.recipe import TrainSettings


def fake_adapter(marker: str) -> Callable[[Path], None]:
    def save(directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "adapter_config.json").write_text(json.dumps({"marker": marker}))

    return save


def test_publish_then_replace_with_a_new_version(tmp_path: Path) -> None:
    target = tmp_path / "personas" / "zhenhuan"
    assert next_version(target) == "1"
    manifest = PersonaManifest(
        name="zhenhuan",
        version=next_version(target),
        base_model="SmolLM2-135M-Instruct",
        system_prompt="现在你要扮演皇帝身边的女人--甄嬛",
        training={"data_sha256": "ab" * 32, "rows": 8, "steps": 3, "final_loss": 2.5},
    )
    publish_bundle(target, manifest, fake_adapter("first"))
    bundle = read_bundle(target)
    assert bundle.manifest.version == "1" and bundle.manifest.training["steps"] == 3
    assert bundle.manifest.system_prompt == "现在你要扮演皇帝身边的女人--甄嬛"
    assert bundle.adapter_dir == target / "adapter"

    assert next_version(target) == "2"
    publish_bundle(target, manifest.model_copy(update={"version": "2"}), fake_adapter("second"))
    assert read_bundle(target).manifest.version == "2"
    assert json.loads((target / "adapter" / "adapter_config.json").read_text()) == {
        "marker": "second"
    }
    assert [p.name for p in target.parent.iterdir()] == ["zhenhuan"]  # no staging left over


def test_recipe_defaults_are_the_tutorials() -> None:
    s = TrainSettings(data=Path("d.json"))
    assert (s.lora_r, s.lora_alpha, s.lora_dropout) == (8, 32, 0.1)
    assert s.target_modules == list(LORA_TARGET_MODULES)
    assert (s.batch_size, s.gradient_accumulation, s.epochs, s.learning_rate) == (4, 4, 3.0, 1e-4)
    assert s.gradient_checkpointing and s.save_steps == 100 and s.max_length == 384
    assert s.persona_name == "d" and s.bundle_dir == Path("personas/d")
    assert TrainSettings(data=Path("d.json"), target_modules=["q_proj,v_proj"]).target_modules == [
        "q_proj",
        "v_proj",
    ]


@pytest.mark.slow  # transformers' TrainingArguments imports torch and accelerate: 5 s
def test_recipe_becomes_training_arguments(tmp_path: Path) -> None:
    from loragate.adapters.training.trainer import training_arguments

    settings = TrainSettings(data=Path("d.json"), checkpoint_dir=tmp_path, max_steps=7)
    args = training_arguments(settings, bf16=False, has_eval=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    assert (args.learning_rate, args.num_train_epochs, args.max_steps) == (1e-4, 3.0, 7)
    assert args.gradient_checkpointing and (args.save_steps, args.eval_steps) == (100, 100)
    assert args.output_dir == str(tmp_path) and not args.bf16
