"""The persona bundle on disk: a directory with `persona.toml` beside (or naming) a peft adapter.

    zhenhuan/
      persona.toml                 # this manifest
      adapter/                     # peft's output: adapter_config.json, adapter_model.safetensors
        adapter_config.json
        adapter_model.safetensors

    # persona.toml
    name = "zhenhuan"              # optional: defaults to the directory's name
    version = "3"
    description = "Zhen Huan, from Empresses in the Palace"
    base_model = "SmolLM2-135M-Instruct"
    adapter = "adapter"            # relative to the bundle; "." for files beside the manifest
    system_prompt = "现在你要扮演皇帝身边的女人--甄嬛"

    [defaults]                     # sampling defaults where a request is silent
    temperature = 0.3
    top_p = 0.9
    max_tokens = 256
    repetition_penalty = 1.05

    [training]                     # written by `loragate train`; informative only
    data_sha256 = "..."
    rows = 3729

A bare peft adapter directory (adapter_config.json and weights, no persona.toml) is a persona too,
with no system prompt and no defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loragate.adapters.untrusted import UntrustedFileError, parse_toml, read_capped
from loragate.validation_errors import first_problem

MANIFEST_NAME = "persona.toml"
ADAPTER_CONFIG = "adapter_config.json"
# The Llama architecture's linear layers, the modules a persona's LoRA may target (vLLM packs
# them into qkv_proj and gate_up_proj): what `loragate train` targets and validation accepts.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ManifestError(ValueError):
    """A bundle that cannot be read; the message names the file and the problem."""


class SamplingDefaultsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)


class PersonaManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    version: str = "1"
    description: str = ""
    base_model: str | None = None
    adapter: str = "adapter"
    system_prompt: str | None = None
    defaults: SamplingDefaultsSpec = Field(default_factory=SamplingDefaultsSpec)
    # A Jinja chat template file in the bundle: the persona's requests render with it (tools
    # too) in place of the model's own, and `loragate train --chat-template` trained with it.
    chat_template: str | None = None
    tool_parser: str | None = None  # vLLM's tool parser for its `auto` calls
    # Requests of this persona in flight at once, whatever their keys: one hot persona cannot
    # take every engine slot. Beyond it a request waits (behind as many others), then gets 429.
    max_parallel: int | None = Field(default=None, ge=1)
    training: dict[str, Any] = Field(default_factory=dict)


class Bundle(BaseModel):
    """A bundle as read from disk: its manifest and the resolved adapter directory."""

    root: Path
    manifest: PersonaManifest
    adapter_dir: Path

    @property
    def name(self) -> str:
        return self.manifest.name or self.root.name


def read_bundle(path: Path) -> Bundle:
    """Read a bundle directory, or a bare peft adapter directory.

    Any way the manifest can be broken (too large, nested too deeply, unreadable) is a
    ManifestError, so that a hostile bundle is refused alone rather than breaking a scan.
    """
    path = Path(path)
    manifest_file = path / MANIFEST_NAME
    if manifest_file.is_file():
        try:
            manifest = PersonaManifest.model_validate(parse_toml(read_capped(manifest_file)))
        except UntrustedFileError as exc:
            raise ManifestError(f"{manifest_file}: {exc}") from exc
        except ValidationError as exc:
            problem = first_problem(exc.errors())
            raise ManifestError(
                f"{manifest_file}: '{problem.dotted() or ''}': {problem.message}"
            ) from exc
        return Bundle(root=path, manifest=manifest, adapter_dir=path / manifest.adapter)
    if (path / ADAPTER_CONFIG).is_file():
        return Bundle(root=path, manifest=PersonaManifest(adapter="."), adapter_dir=path)
    raise ManifestError(f"{path}: neither a persona bundle ({MANIFEST_NAME}) nor a peft adapter")


def write_manifest(bundle_dir: Path, manifest: PersonaManifest) -> Path:
    """Write persona.toml (a tiny TOML writer: the manifest's shape is flat plus two tables)."""
    lines = []
    tables: dict[str, dict[str, Any]] = {}
    for key, value in manifest.model_dump(exclude_none=True).items():
        if isinstance(value, dict):
            tables[key] = value
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for table, values in tables.items():
        if values:
            lines.append(f"\n[{table}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    out = Path(bundle_dir) / MANIFEST_NAME
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string
