"""The PNG plots of the results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def offline_bars(path: Path, title: str, groups: Mapping[str, Mapping[str, float]]) -> None:
    """Grouped bars: for each ``model / decoding`` group, tokens/s of each engine."""
    plt = _pyplot()
    names = list(groups)
    engines = sorted({e for values in groups.values() for e in values})
    width = 0.8 / max(1, len(engines))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(names) + 2), 4.2))
    for k, engine in enumerate(engines):
        xs = [i + (k - (len(engines) - 1) / 2) * width for i in range(len(names))]
        ys = [groups[name].get(engine, 0.0) for name in names]
        bars = ax.bar(xs, ys, width, label=engine)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("target tokens / s")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def throughput_latency(path: Path, title: str, series: Mapping[str, Sequence[tuple[float, float, int]]]) -> None:
    """One line per config through its (p99 ms, requests/s) points, each labelled with its concurrency."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        for x, y, concurrency in points:
            ax.annotate(f"c={concurrency}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency (ms, log)")
    ax.set_ylabel("throughput (requests / s)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
