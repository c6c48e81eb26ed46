"""`--data https://...`: a data set downloaded once into the cache, then read from there.

The copy lives at `<cache>/data/<sha256 of the URL><the URL's extension>`: one file per URL, its
extension kept (a JSON array and JSONL are told apart by content, but the name still says what
the file is). It is written to a temporary file beside it and renamed into place, so an
interrupted download never leaves a file that a later run would take for the data set; a later
run finds the copy and needs no network. Delete the file to download it again.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from loragate.adapters.training.dataset import DatasetError
from loragate.paths import cache_dir

_SCHEMES = ("http://", "https://")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}")
_TIMEOUT_SECONDS, _CONNECT_SECONDS = 60.0, 15.0
_CHUNK = 1 << 16


class DataDownloadError(DatasetError):
    """The data set's URL could not be downloaded (unreachable host, HTTP error, cut short)."""


def is_url(source: str) -> bool:
    return source[:8].lower().startswith(_SCHEMES)


def url_file_name(url: str) -> str:
    """The last segment of the URL's path, decoded: `huanhuan.json`; '' when there is none."""
    return PurePosixPath(unquote(urlsplit(url).path)).name


def cached_data_path(url: str) -> Path:
    suffix = PurePosixPath(url_file_name(url)).suffix
    extension = suffix.lower() if _EXTENSION.fullmatch(suffix) else ""
    return cache_dir() / "data" / f"{hashlib.sha256(url.encode()).hexdigest()}{extension}"


def fetch_data_set(url: str) -> Path:
    """The local copy of the data set at `url`, downloading it on first use."""
    target = cached_data_path(url)
    if target.is_file():
        print(f"Using the copy of {url} downloaded earlier: {target}")
        return target
    print(f"Downloading {url} into {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise DataDownloadError(
            f"cannot write the data set's copy in {target.parent}: {exc.strerror or exc}"
        ) from exc
    try:
        with os.fdopen(handle, "wb") as out:
            _download(url, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a cached download is not
        os.replace(temporary, target)
    except OSError as exc:
        raise DataDownloadError(
            f"cannot write the data set's copy {target}: {exc.strerror or exc}"
        ) from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _download(url: str, out: BinaryIO) -> None:
    import httpx  # here, not at the top: `loragate --help` reads this module
    from tqdm import tqdm

    timeout = httpx.Timeout(_TIMEOUT_SECONDS, connect=_CONNECT_SECONDS)
    host = urlsplit(url).hostname or url
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code >= 400:
                raise DataDownloadError(
                    f"cannot download the data set {url}: HTTP {response.status_code} "
                    f"{httpx.codes.get_reason_phrase(response.status_code)}".rstrip()
                )
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            name = url_file_name(url) or host
            with tqdm(
                total=total,
                desc=f"Downloading {name}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
            ) as bar:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    bar.update(response.num_bytes_downloaded - bar.n)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise DataDownloadError(
            f"cannot reach {host} to download the data set {url} ({_reason(exc)}): connect to "
            "the network, or download the file yourself and pass its path to --data"
        ) from exc
    except httpx.TimeoutException as exc:
        raise DataDownloadError(
            f"downloading the data set {url} timed out ({_reason(exc)}): try again, or download "
            "the file yourself and pass its path to --data"
        ) from exc
    except httpx.HTTPError as exc:  # cut short, bad redirect, protocol error
        raise DataDownloadError(
            f"downloading the data set {url} failed ({_reason(exc)}): try again, or download "
            "the file yourself and pass its path to --data"
        ) from exc


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
