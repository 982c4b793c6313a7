"""A PNG comparing bundles: prefill and decode tokens/s (mean ± stddev) per test, one bar per bundle.

matplotlib is optional (the ``plot`` extra) and only needed on the host that draws.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import require
from .values import PP, TG, ProfileReport


def write_png(report: ProfileReport, path: Path, title: str | None = None) -> Path:
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")  # no display on a build server or in CI
    import matplotlib.pyplot as plt

    results = [r for r in report.results if r.cases]
    kinds = [k for k in (PP, TG) if any(c.case.kind == k for r in results for c in r.cases)]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(6.5 * max(len(kinds), 1), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        tests = sorted({c.case.name for r in results for c in r.cases if c.case.kind == kind},
                       key=lambda n: (len(n), n))
        width = 0.8 / max(len(results), 1)
        for i, r in enumerate(results):
            by_name = {c.case.name: c for c in r.cases}
            xs, ys, es = [], [], []
            for j, name in enumerate(tests):
                if name in by_name:
                    xs.append(j + (i - (len(results) - 1) / 2) * width)
                    ys.append(by_name[name].tps_mean)
                    es.append(by_name[name].tps_std)
            label = f"{Path(r.bundle).name} ({r.label})" + (" [partial]" if r.partial else "")
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=label)
        ax.set_xticks(range(len(tests)), tests)
        ax.set_ylabel("tokens/s")
        ax.set_title("prefill" if kind == PP else "decode")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    inv = report.inventory
    fig.suptitle(title or f"edgekit profile on {report.device}: {inv.get('cpu_model', '?')} ({inv.get('machine', '?')})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(labels) - 1) // 3), 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
