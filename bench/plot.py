"""Latency (p50 and p99) against concurrency, from a results file of ``bench/run.py``.

python bench/plot.py bench/results/latest.json bench/latency.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

STYLE = {
    "upstream": ("direct upstream (nginx)", "tab:gray", ":"),
    "passthrough": ("bare pass-through (Litestar + aiohttp)", "tab:blue", "-"),
    "ledger-sqlite": ("Ledger, SQLite", "tab:green", "-"),
    "ledger-postgres": ("Ledger, PostgreSQL", "tab:olive", "--"),
    "litellm": ("LiteLLM proxy 1.103.0 (no DB)", "tab:red", "-."),
}


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["sweep"]
    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    for name, (label, colour, line) in STYLE.items():
        points = sweep.get(name)
        if not points:
            continue
        levels = sorted(int(c) for c in points)
        for axis, key in zip(axes[:2], ("p50_ms", "p99_ms"), strict=True):
            axis.plot(
                levels,
                [points[str(c)][key] for c in levels],
                line,
                color=colour,
                marker="o",
                label=label,
            )
        axes[2].plot(
            levels,
            [points[str(c)]["rps"] for c in levels],
            line,
            color=colour,
            marker="o",
            label=label,
        )
    for axis, title in zip(axes[:2], ("p50 latency", "p99 latency"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel("ms (log scale)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    axes[2].set_title("throughput")
    axes[2].set_xlabel("concurrent connections")
    axes[2].set_ylabel("requests/s (log scale)")
    axes[2].set_yscale("log")
    axes[2].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    machine = results.get("machine", {})
    figure.suptitle(
        "Non-streaming chat completion against a static upstream — "
        f"{machine.get('cpus', '?')} cores, {machine.get('cpu_model', '')}; wrk closed loop, "
        f"median of {results.get('rounds', 1)} round(s)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "bench/latency.png")
    plot(json.loads(source.read_text()), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
