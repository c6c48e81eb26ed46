"""One registered persona version: what was read and checked from disk, and its live counters."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loragate.adapters.confinement import AdapterRoots
from loragate.adapters.errors import AdapterValidationError, InvalidPersonaNameError
from loragate.adapters.manifest import MANIFEST_NAME, ManifestError, read_bundle
from loragate.adapters.targets import ModelTarget, SamplingDefaults
from loragate.adapters.untrusted import UntrustedFileError, excerpt, read_capped
from loragate.adapters.validation import ModelShape, validate_adapter
from loragate.engine.tool_parsers import parser_names
from loragate.engine.types import AdapterRef
from loragate.wire import PersonaInfo, PersonaState

PersonaSource = Literal["dir", "cli", "api"]
PERSONA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _checked_parser(name: str | None) -> str | None:
    if name is None:
        return None
    known = parser_names()
    if name not in known:
        listed = ", ".join(known)
        raise AdapterValidationError(
            f"The manifest's tool_parser '{excerpt(name)}' is not one of vLLM's: {listed}."
        )
    return name


def check_persona_name(name: str, base_name: str) -> None:
    if not PERSONA_NAME.fullmatch(name):  # not match: "$" would let a trailing newline in
        raise InvalidPersonaNameError(
            f"Invalid persona name '{excerpt(name)}': use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit ('@' separates a version in requests)."
        )
    if name == base_name:
        raise InvalidPersonaNameError(f"The persona name '{name}' is the base model's name.")


@dataclass(eq=False)
class Persona:
    name: str
    version: str
    source: PersonaSource
    path: Path  # the bundle (or bare adapter) directory, resolved
    adapter: AdapterRef | None  # None when the bundle could not even be read
    description: str = ""
    base_model: str | None = None
    system_prompt: str | None = None
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    rank: int | None = None
    size_bytes: int | None = None
    chat_template: str | None = None
    tool_parser: str | None = None
    max_parallel: int | None = None
    warnings: tuple[str, ...] = ()
    state: PersonaState = "registered"
    error: str | None = None
    load_time_s: float | None = None
    requests_served: int = 0
    last_used: float | None = None
    in_flight: int = 0
    created: float = field(default_factory=time.time)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def loaded(self) -> bool:
        return self.state == "loaded"

    # -- Its life: registered -> loading -> loaded (-> registered when evicted) -> retired,
    # or failed. Each step is one of these methods; anything else is a bug, and raises.

    def start_loading(self) -> None:
        self._move("loading", frm=("registered",))

    def finish_loading(self, load_time_s: float) -> None:
        self._move("loaded", frm=("loading",))
        self.error, self.load_time_s = None, load_time_s

    def fail(self, error: str) -> None:
        self._move("failed", frm=("registered", "loading"))
        self.error = error

    def evicted(self) -> None:
        """Taken out of the engine to make room: loaded again on its next request."""
        self._move("registered", frm=("loaded",))

    def lost(self) -> None:
        """Its engine died (while it loaded, or held it): loaded again into the next one."""
        self._move("registered", frm=("loading", "loaded"))

    def retire(self) -> None:
        """Unpublished (replaced or deleted): it serves the requests it has, then leaves."""
        self._move("retired", frm=("registered", "loading", "loaded", "failed"))

    def _move(self, to: PersonaState, *, frm: tuple[PersonaState, ...]) -> None:
        if self.state not in frm:
            raise RuntimeError(f"persona '{self.name}' {self.version}: {self.state} -> {to}")
        self.state = to

    def target(self) -> ModelTarget:
        return ModelTarget(
            name=self.name,
            version=self.version,
            adapter=self.adapter,
            system_prompt=self.system_prompt,
            defaults=self.defaults,
            chat_template=self.chat_template,
            tool_parser=self.tool_parser,
            max_parallel=self.max_parallel,
        )

    def check_out(self) -> None:
        self.in_flight += 1
        self.requests_served += 1
        self.last_used = time.time()
        self.idle.clear()

    def check_in(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def info(self) -> PersonaInfo:
        defaults = {k: v for k, v in vars(self.defaults).items() if v is not None}
        return PersonaInfo(
            name=self.name,
            version=self.version,
            state=self.state,
            error=self.error,
            description=self.description,
            base_model=self.base_model,
            system_prompt=self.system_prompt,
            defaults=defaults,
            adapter_path=self.adapter.path if self.adapter else str(self.path),
            rank=self.rank,
            size_bytes=self.size_bytes,
            load_time_s=self.load_time_s,
            requests_served=self.requests_served,
            last_used=self.last_used,
            in_flight=self.in_flight,
            adapter_id=self.adapter.int_id if self.adapter else None,
            warnings=list(self.warnings),
        )


@dataclass(frozen=True)
class PersonaReader:
    """Reads and checks a bundle into a Persona; everything it refuses is a 400."""

    roots: AdapterRoots
    shape: ModelShape
    max_rank: int
    base_names: tuple[str, ...]

    def read(self, name: str, path: str | Path, source: PersonaSource, int_id: int) -> Persona:
        bundle_dir = self.roots.confine(path)
        self.roots.confine_file(bundle_dir / MANIFEST_NAME)  # a manifest symlinked out is refused
        try:
            bundle = read_bundle(bundle_dir)
        except ManifestError as exc:
            raise AdapterValidationError(str(exc)) from exc
        adapter_dir = self.roots.confine(bundle.adapter_dir.absolute(), param="path")
        try:
            report = validate_adapter(
                adapter_dir,
                self.shape,
                max_rank=self.max_rank,
                base_names=self.base_names,
                roots=self.roots,
            )
        except OSError as exc:  # a file removed or made unreadable while it was checked
            raise AdapterValidationError(
                f"The adapter at '{adapter_dir}' cannot be read ({exc.strerror})."
            ) from exc
        manifest = bundle.manifest
        warnings = list(report.warnings)
        if manifest.base_model and manifest.base_model not in self.base_names:
            warnings.append(
                f"The manifest names the base model '{manifest.base_model}'; "
                f"the server serves '{self.base_names[0]}'."
            )
        # The engine's name is unique per loaded version: vLLM keys its prefix cache by the
        # adapter's name and path, so a new version under the old name (or the same path
        # rewritten) could otherwise reuse KV blocks computed with the old weights.
        engine_name = f"{name}#{int_id}"
        return Persona(
            name=name,
            version=manifest.version,
            source=source,
            path=bundle_dir,
            adapter=AdapterRef(engine_name, int_id, str(adapter_dir)),
            description=manifest.description,
            base_model=manifest.base_model or self.base_names[0],
            system_prompt=manifest.system_prompt,
            defaults=SamplingDefaults.from_mapping(manifest.defaults.model_dump()),
            rank=report.rank,
            size_bytes=report.size_bytes,
            chat_template=self._template(bundle_dir, manifest.chat_template),
            tool_parser=_checked_parser(manifest.tool_parser),
            max_parallel=manifest.max_parallel,
            warnings=tuple(warnings),
        )

    def _template(self, bundle_dir: Path, name: str | None) -> str | None:
        if name is None:
            return None
        path = self.roots.confine_file(bundle_dir / name, param="path")
        what = f"The chat template '{excerpt(name)}'"
        if not path.is_relative_to(bundle_dir):
            raise AdapterValidationError(f"{what} must be a file inside the bundle.")
        try:
            return read_capped(path).decode("utf-8")
        except UntrustedFileError as exc:
            raise AdapterValidationError(f"{what} {exc}.") from exc
        except UnicodeDecodeError as exc:
            raise AdapterValidationError(f"{what} is not UTF-8 text.") from exc

    def failed(self, name: str, path: Path, source: PersonaSource, error: str) -> Persona:
        """A persona whose bundle was refused: listed with its error, never served."""
        return Persona(name, "", source, path, None, state="failed", error=error)
