"""PNG plots of a run: serving figures by concurrency, and the instant-engine overhead."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.overhead import OverheadResult
from benchmarks.plan import WORKLOAD_TITLES
from benchmarks.servers import LORAGATE, SERVER_TITLES, TUTORIAL, VLLM
from benchmarks.stats import LevelResult

_STYLE = {
    LORAGATE: {"color": "tab:blue", "marker": "o"},
    VLLM: {"color": "tab:orange", "marker": "s", "linestyle": "--"},
    TUTORIAL: {"color": "tab:gray", "marker": "x", "linestyle": ":"},
}
_METRICS = {
    "throughput": ("output_tokens_per_s", "output tokens/s", False),
    "ttft": ("ttft_p50_ms", "TTFT p50 (ms)", True),
    "itl": ("itl_p50_ms", "inter-token latency p50 (ms)", False),
}


def _serving_plot(
    levels: Sequence[LevelResult], workloads: Sequence[str], metric: str, path: Path
) -> None:
    import matplotlib.pyplot as plt

    attribute, label, log_y = _METRICS[metric]
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for server, style in _STYLE.items():
            rows = sorted(
                (r for r in levels if r.server == server and r.workload == workload),
                key=lambda r: r.concurrency,
            )
            if rows:
                xs = [r.concurrency for r in rows]
                ys = [getattr(r, attribute) for r in rows]
                ax.plot(xs, ys, label=SERVER_TITLES[server], **style)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(WORKLOAD_TITLES[workload])
        ax.set_xlabel("concurrent requests")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(label)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overhead_plot(overhead: Sequence[OverheadResult], path: Path) -> None:
    import matplotlib.pyplot as plt

    labels = [
        f"{'streamed' if o.stream else 'whole'}\nc={o.concurrency}\n{o.keys} keys" for o in overhead
    ]
    fig, (rps, lat) = plt.subplots(1, 2, figsize=(9, 3.6))
    rps.bar(labels, [o.requests_per_s for o in overhead], color="tab:blue")
    rps.axhline(500, color="tab:red", linestyle="--", label="target (whole): 500")
    rps.set_ylabel("requests/s")
    rps.legend()
    lat.bar(labels, [o.latency_p50_ms for o in overhead], color="tab:green")
    lat.set_yscale("log")
    lat.axhline(2, color="tab:red", linestyle="--", label="target (whole, c=1): 2 ms")
    lat.set_ylabel("latency p50 (ms)")
    lat.legend()
    fig.suptitle("loragate over an instant engine (wrk, 1 core each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    levels: Sequence[LevelResult],
    workloads: Sequence[str],
    overhead: Sequence[OverheadResult],
    out_dir: Path,
) -> list[str]:
    """The file names written (relative to out_dir, for the report's links)."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    if levels:
        for metric in _METRICS:
            _serving_plot(levels, workloads, metric, out_dir / f"{metric}.png")
            names.append(f"{metric}.png")
    if overhead:
        _overhead_plot(overhead, out_dir / "overhead.png")
        names.append("overhead.png")
    return names
