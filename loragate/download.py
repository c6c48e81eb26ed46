"""`loragate download MODEL --source modelscope|hf --dir DIR`: fetch a base model to serve.

The tutorial downloads Llama-3.1-8B-Instruct from ModelScope (`LLM-Research/...`); the same model
is `meta-llama/...` on the Hugging Face hub, so a known model may be named by either id or its
short name, whatever the source. Both hubs' own `snapshot_download` show progress bars and resume
partial downloads. Without a network the command ends with one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Source = Literal["modelscope", "hf"]
HUB_NAMES: dict[Source, str] = {"modelscope": "ModelScope", "hf": "the Hugging Face hub"}
_PACKAGES: dict[Source, str] = {"modelscope": "modelscope", "hf": "huggingface_hub"}
# The same model's id on each hub, by its short name.
KNOWN_MODELS: dict[str, dict[Source, str]] = {
    "llama-3.1-8b-instruct": {
        "modelscope": "LLM-Research/Meta-Llama-3.1-8B-Instruct",
        "hf": "meta-llama/Llama-3.1-8B-Instruct",
    },
}


class DownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class DownloadPlan:
    source: Source
    repo_id: str
    local_dir: Path
    revision: str | None = None
    endpoint: str | None = None


def repo_id_for(model: str, source: Source) -> str:
    for short_name, ids in KNOWN_MODELS.items():
        if model.lower() == short_name or model in ids.values():
            return ids[source]
    return model


def plan_download(
    model: str,
    source: Source,
    directory: Path,
    revision: str | None = None,
    endpoint: str | None = None,
) -> DownloadPlan:
    repo_id = repo_id_for(model, source)
    # DIR/<owner>/<name>: the tutorial's layout (/root/autodl-tmp/LLM-Research/Meta-Llama-...).
    return DownloadPlan(source, repo_id, Path(directory) / repo_id, revision, endpoint)


def download(plan: DownloadPlan) -> Path:
    hub = _snapshot_download(plan.source)
    kwargs: dict[str, Any] = {"local_dir": str(plan.local_dir), "endpoint": plan.endpoint}
    if plan.revision:
        kwargs["revision"] = plan.revision
    try:
        return Path(hub(plan.repo_id, **kwargs))
    except Exception as exc:  # each hub raises its own hierarchy; the user needs one line
        raise DownloadError(_explain(plan, exc)) from exc


def _snapshot_download(source: Source) -> Any:
    try:
        if source == "modelscope":
            from modelscope import snapshot_download as modelscope_download

            return modelscope_download
        from huggingface_hub import snapshot_download as hf_download

        return hf_download
    except ImportError as exc:
        raise DownloadError(
            f"downloading from {HUB_NAMES[source]} needs the package '{_PACKAGES[source]}': "
            "pip install 'loragate[download]'"
        ) from exc


def is_offline_error(exc: BaseException) -> bool:
    """True when the cause, anywhere down the chain, is that the hub could not be reached."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError | socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _explain(plan: DownloadPlan, exc: Exception) -> str:
    hub = HUB_NAMES[plan.source]
    if is_offline_error(exc):
        return (
            f"cannot reach {hub} to download {plan.repo_id}: this machine looks offline "
            f"(or {plan.endpoint or 'the hub'} is unreachable). Connect, set a mirror with "
            "--endpoint, or copy the model directory here and pass it to --model."
        )
    if type(exc).__name__ == "GatedRepoError":
        return (
            f"{plan.repo_id} is gated on {hub}: accept its license on the model page, then set "
            "HF_TOKEN to a token of that account."
        )
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"downloading {plan.repo_id} from {hub} failed: {type(exc).__name__}: {first_line}"


def add_download_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "download",
        help="download a base model from ModelScope or the Hugging Face hub",
        description="Download a model snapshot, with progress, into DIR/<owner>/<name>. Known "
        f"short names: {', '.join(KNOWN_MODELS)} (mapped to each hub's id).",
    )
    parser.add_argument("model", metavar="MODEL", help="repo id or known short name")
    parser.add_argument(
        "--source",
        choices=["modelscope", "hf"],
        default="modelscope",
        help="the hub: ModelScope (the tutorial's, default) or Hugging Face",
    )
    parser.add_argument("--dir", type=Path, default=Path("models"), help="default: ./models")
    parser.add_argument("--revision", default=None, help="branch, tag or commit")
    parser.add_argument("--endpoint", default=None, help="hub URL or mirror to use instead")
    parser.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    plan = plan_download(args.model, args.source, args.dir, args.revision, args.endpoint)
    print(f"Downloading {plan.repo_id} from {HUB_NAMES[plan.source]} into {plan.local_dir}")
    try:
        path = download(plan)
    except DownloadError as exc:
        print(f"loragate download: {exc}", file=sys.stderr)
        return 1
    print(f"Downloaded to {path}\nServe it: loragate serve --model {path}")
    return 0
