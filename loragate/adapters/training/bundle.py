"""Publishing a trained adapter as a persona bundle, and pushing it to a running gateway."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from loragate.adapters.manifest import ManifestError, PersonaManifest, read_bundle, write_manifest
from loragate.wire import error_message_in

ADAPTER_SUBDIR = "adapter"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class RegistrationError(RuntimeError):
    pass


def next_version(bundle_dir: Path) -> str:
    """One more than the version of the bundle being replaced, so the gateway sees a new one."""
    try:
        previous = read_bundle(bundle_dir).manifest.version
    except ManifestError:
        return "1"
    return str(int(previous) + 1) if previous.isdigit() else f"{previous}+1"


def publish_bundle(
    bundle_dir: Path,
    manifest: PersonaManifest,
    save_adapter: Callable[[Path], None],
    files: Mapping[str, str | None] | None = None,
) -> Path:
    """Write the bundle beside its destination, then swap it in with renames.

    A watched personas directory never sees a half-written bundle: the staging directory's name
    starts with a dot, and the finished one appears under its real name in one rename.
    """
    bundle_dir = Path(bundle_dir)
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.new-", dir=bundle_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is as readable as any directory
    try:
        save_adapter(staging / ADAPTER_SUBDIR)
        for name, text in (files or {}).items():  # beside the manifest (a chat template...)
            if text is not None:
                (staging / name).write_text(text)
        write_manifest(staging, manifest.model_copy(update={"adapter": ADAPTER_SUBDIR}))
        read_bundle(staging)  # what the gateway will read must read back
        _swap_in(staging, bundle_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return bundle_dir


def _swap_in(staging: Path, bundle_dir: Path) -> None:
    if not bundle_dir.exists():
        staging.rename(bundle_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.old-", dir=bundle_dir.parent))
    retired.rmdir()
    bundle_dir.rename(retired)
    staging.rename(bundle_dir)
    shutil.rmtree(retired, ignore_errors=True)


def register_bundle(
    gateway_url: str, name: str, bundle_dir: Path, api_key: str | None = None
) -> dict[str, Any]:
    """PUT /v1/personas/{name} {"path": ...}: registers the persona or swaps in this version."""
    base = gateway_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{base}/v1/personas/{name}"
    try:
        response = httpx.put(
            url, json={"path": str(Path(bundle_dir).resolve())}, headers=headers, timeout=300
        )
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the gateway at {url}: {exc}") from exc
    if response.status_code not in (200, 201):
        message = error_message_in(response.text) or response.text[:500]
        raise RegistrationError(
            f"the gateway refused {name!r} (HTTP {response.status_code}): {message}"
        )
    info: dict[str, Any] = response.json()
    return info
