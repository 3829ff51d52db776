"""PNG plots of the benchmarks' figures (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "o-"  # a matplotlib format string; baselines are dashed


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    xbase: int = 10  # 2 for client counts, shown as plain numbers


def figure(path: Path, panels: list[Panel]) -> str:
    """Draw ``panels`` side by side into ``path``; returns the file's name (for the markdown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for s in panel.series:
            ax.plot(s.x, s.y, s.style, label=s.label, markersize=4)
        if panel.logx:
            ax.set_xscale("log", base=panel.xbase)
            if panel.xbase == 2:
                ax.set_xticks(list(panel.series[0].x))
                ax.xaxis.set_major_formatter(ScalarFormatter())
        if panel.logy:
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, not 5x10^-1
            ax.yaxis.set_major_formatter(plain)
            low, high = ax.get_ylim()
            ax.yaxis.set_minor_formatter(plain if high / low < 30 else NullFormatter())  # label minors in a short range
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}", flush=True)
    return path.name
