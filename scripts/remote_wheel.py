"""A few members of a wheel on the package index, without downloading the wheel.

The index's simple API (PEP 691 JSON, or PEP 503 HTML) gives the file's URL and sha256; HTTP
range requests read the zip's central directory and the wanted members only; each member is
checked against the wheel's RECORD and cached under a directory named by the wheel's sha256, so
a later run fetches nothing. Where the server refuses range requests the whole wheel is
downloaded once into that directory instead (checked against the index's sha256).

The index is the one pip on this machine uses (`pip config list`: PIP_INDEX_URL, index-url,
extra-index-url, cert); proxies come from the environment, as pip's do.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import io
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.parse
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

PYPI_SIMPLE = "https://pypi.org/simple"
BLOCK = 512 * 1024  # bytes per range request unit: the central directory takes a few
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class RangeNotSupportedError(Exception):
    pass


@dataclass(frozen=True)
class WheelFile:
    filename: str
    url: str
    sha256: str

    @property
    def dist_info(self) -> str:
        name, version = self.filename.split("-")[:2]
        return f"{name}-{version}.dist-info"


@dataclass
class Traffic:
    """What the network was asked for: proves that a warm run fetches nothing."""

    index_pages: int = 0
    range_requests: int = 0
    bytes_fetched: int = 0
    whole_downloads: int = 0


@dataclass(frozen=True)
class PipNetwork:
    """How pip on this machine reaches the package index."""

    index_urls: tuple[str, ...] = (PYPI_SIMPLE,)
    cert: str | None = None
    traffic: Traffic = field(default_factory=Traffic, compare=False)

    @classmethod
    def from_pip(cls, python: str = sys.executable) -> PipNetwork:
        listing = subprocess.run(
            [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
        ).stdout
        pairs: list[tuple[str, str]] = re.findall(r"^(\S+?)='(.*)'$", listing, flags=re.MULTILINE)
        config = dict(pairs)

        def setting(name: str) -> str | None:
            # pip's precedence for `pip install`: environment, then [install], then [global].
            for section in (":env:", "install", "global"):
                if f"{section}.{name}" in config:
                    return config[f"{section}.{name}"]
            return None

        urls = [setting("index-url") or PYPI_SIMPLE, *(setting("extra-index-url") or "").split()]
        # Local (file://) indexes hold no GPU wheels and answer no range requests.
        remote = tuple(url for url in urls if url.startswith(("https://", "http://")))
        return cls(remote, setting("cert"))

    def client(self) -> httpx.Client:
        verify: ssl.SSLContext | bool = True
        if self.cert:
            verify = ssl.create_default_context(cafile=self.cert)
        return httpx.Client(verify=verify, timeout=120, follow_redirects=True, trust_env=True)


def _normalized(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def wheel_fits(filename: str, python_tag: str) -> bool:
    """A Linux x86-64 wheel this interpreter (e.g. cp311) can install: NVIDIA's platform."""
    if not filename.endswith(".whl"):
        return False
    python, abi, platform = filename[: -len(".whl")].split("-")[-3:]
    linux = any(p.startswith("manylinux") and p.endswith("_x86_64") for p in platform.split("."))
    return linux and (python_tag in python.split(".") or abi == "abi3")


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.links.append((data.strip(), self._href))
            self._href = None


def project_files(net: PipNetwork, client: httpx.Client, page: str) -> list[WheelFile]:
    """Every file of a project's simple-API page that carries a sha256."""
    response = client.get(page, headers={"Accept": f"{_SIMPLE_JSON}, text/html;q=0.1"})
    net.traffic.index_pages += 1
    if response.status_code == 404:
        return []
    response.raise_for_status()
    if response.headers.get("content-type", "").startswith(_SIMPLE_JSON):
        entries = [
            (f["filename"], f["url"], f.get("hashes", {}).get("sha256"))
            for f in response.json()["files"]
        ]
    else:
        parser = _Anchors()
        parser.feed(response.text)
        entries = []
        for filename, href in parser.links:
            url, _, fragment = href.partition("#")
            digest = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
            entries.append((filename, url, digest))
    return [
        WheelFile(name, urllib.parse.urljoin(page, url), digest)
        for name, url, digest in entries
        if digest
    ]


def find_wheel(
    net: PipNetwork, client: httpx.Client, project: str, version: str, python_tag: str
) -> WheelFile:
    prefix = f"{_normalized(project).replace('-', '_')}-{version}-"
    for index in net.index_urls:
        page = f"{index.rstrip('/')}/{_normalized(project)}/"
        for wheel in project_files(net, client, page):
            if wheel.filename.lower().startswith(prefix) and wheel_fits(wheel.filename, python_tag):
                return wheel
    raise LookupError(
        f"no Linux x86-64 {python_tag} wheel of {project}=={version} on {', '.join(net.index_urls)}"
    )


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a URL, read in blocks through HTTP range requests."""

    def __init__(self, client: httpx.Client, url: str, traffic: Traffic):
        super().__init__()
        self._client, self._url, self._traffic = client, url, traffic
        self._blocks: dict[int, bytes] = {}
        self._pos = 0
        self.size = self._probe()

    def _probe(self) -> int:
        # Streamed: a server that ignores Range would send the whole file with its 200.
        with self._client.stream("GET", self._url, headers={"Range": "bytes=0-0"}) as response:
            self._traffic.range_requests += 1
            total = response.headers.get("content-range", "").rpartition("/")[2]
            if response.status_code != 206 or not total.isdigit():
                raise RangeNotSupportedError(
                    f"{self._url} answered a range request with HTTP {response.status_code}"
                )
        return int(total)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self.size)
        if end <= self._pos:
            return 0
        first, last = self._pos // BLOCK, (end - 1) // BLOCK
        self._fetch([i for i in range(first, last + 1) if i not in self._blocks])
        data = b"".join(self._blocks[i] for i in range(first, last + 1))
        start = self._pos - first * BLOCK
        count = end - self._pos
        view[:count] = data[start : start + count]
        self._pos = end
        return count

    def _fetch(self, missing: list[int]) -> None:
        for run in _contiguous(missing):  # one request per run of adjacent missing blocks
            low, high = run[0] * BLOCK, min((run[-1] + 1) * BLOCK, self.size) - 1
            response = self._client.get(self._url, headers={"Range": f"bytes={low}-{high}"})
            self._traffic.range_requests += 1
            if response.status_code != 206 or len(response.content) != high - low + 1:
                raise RangeNotSupportedError(
                    f"{self._url}: bytes {low}-{high} came back as HTTP {response.status_code} "
                    f"with {len(response.content)} bytes"
                )
            self._traffic.bytes_fetched += len(response.content)
            for k, block in enumerate(run):
                self._blocks[block] = response.content[k * BLOCK : (k + 1) * BLOCK]


def _contiguous(blocks: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for block in blocks:
        if run and block != run[-1] + 1:
            yield run
            run = []
        run.append(block)
    if run:
        yield run


def record_digest(data: bytes) -> str:
    """A file's hash as a wheel's RECORD writes it."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def parse_record(text: str) -> dict[str, str]:
    """RECORD's path -> "sha256=..." (its rows are CSV; paths with commas do not occur here)."""
    rows = (line.rsplit(",", 2) for line in text.splitlines() if line.strip())
    return {row[0]: row[1] for row in rows if len(row) == 3 and row[1]}


class WheelCache:
    """Members of remote wheels, under root/<wheel sha256>/, each checked against RECORD."""

    def __init__(self, root: Path, net: PipNetwork):
        self.root = root
        self.net = net

    def wheel(self, project: str, version: str, python_tag: str) -> WheelFile:
        """The index's answer, cached: a release's files do not change once uploaded."""
        entry = self.root / "index" / f"{_normalized(project)}-{version}-{python_tag}.json"
        if entry.is_file():
            return WheelFile(**json.loads(entry.read_text()))
        with self.net.client() as client:
            found = find_wheel(self.net, client, project, version, python_tag)
        _write(entry, json.dumps(asdict(found)).encode())
        return found

    def read(self, wheel: WheelFile, paths: Iterable[str]) -> dict[str, bytes]:
        """The wheel's RECORD and those of `paths` it holds (absent ones are left out)."""
        members = self.root / wheel.sha256 / "members"
        record_path = f"{wheel.dist_info}/RECORD"
        wanted = list(dict.fromkeys([record_path, *paths]))
        listed: set[str] | None = None  # known once RECORD is cached: then no lookup for absent
        if (members / record_path).is_file():
            listed = {record_path, *parse_record((members / record_path).read_text())}
        missing = [
            p for p in wanted if not (members / p).is_file() and (listed is None or p in listed)
        ]
        if missing:
            with self._opened(wheel) as archive:
                present = set(archive.namelist())
                record_data = archive.read(record_path)
                record = parse_record(record_data.decode())
                for path in missing:
                    if path == record_path or path not in present:
                        continue
                    data = archive.read(path)
                    if record.get(path) != record_digest(data):
                        raise ValueError(f"{wheel.filename}: {path} does not match its RECORD")
                    _write(members / path, data)
                _write(members / record_path, record_data)  # last: it marks the rest complete
        return {p: (members / p).read_bytes() for p in wanted if (members / p).is_file()}

    @contextmanager
    def _opened(self, wheel: WheelFile) -> Iterator[zipfile.ZipFile]:
        whole = self.root / wheel.sha256 / wheel.filename
        with self.net.client() as client:
            remote = None
            if not whole.is_file():
                try:  # the probe and the central directory: a refusal shows here
                    remote = zipfile.ZipFile(RemoteFile(client, wheel.url, self.net.traffic))
                except RangeNotSupportedError:
                    self._download(client, wheel, whole)
            with remote or zipfile.ZipFile(whole) as archive:
                yield archive

    def _download(self, client: httpx.Client, wheel: WheelFile, target: Path) -> None:
        print(f"range requests refused: downloading {wheel.filename} once", file=sys.stderr)
        partial = target.with_name(target.name + ".part")
        partial.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with client.stream("GET", wheel.url) as response, partial.open("wb") as out:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        self.net.traffic.whole_downloads += 1
        if digest.hexdigest() != wheel.sha256:
            partial.unlink()
            raise ValueError(f"{wheel.filename}: sha256 differs from the index's")
        os.replace(partial, target)


def _write(path: Path, data: bytes) -> None:
    """Atomically: a run killed half-way leaves no truncated member in the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)
