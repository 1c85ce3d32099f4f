"""Draw docs/img/sinkhorn_cpu.png from the figures of the CPU Sinkhorn benchmark.

    python -m ram_ot.bench sinkhorn --json docs/img/sinkhorn_cpu.json
    python docs/plot_benchmarks.py docs/img/sinkhorn_cpu.json docs/img/sinkhorn_cpu.png

Bars: time of 100 forced iterations per solver at each shape, on a log scale, with the
memory-bandwidth lower bound measured in the same run as a line.
"""

from __future__ import annotations

import json
import sys


def plot(json_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path) as fh:
        data = json.load(fh)
    rows, meta = data["rows"], data["meta"]
    names = [f"{tuple(r['shape'])}\n{r['label']}" for r in rows]
    series = [("official (re-implemented)", "official_s"), ("POT batched", "pot_batch_s"),
              ("ram-ot (torch backend)", "ours_s")]  # fmt: skip
    width = 0.26
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for k, (label, key) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ax.bar(xs, [r[key] * 1e3 for r in rows], width, label=label)
    for i, r in enumerate(rows):
        ax.hlines(r["bandwidth_bound_s"] * 1e3, i - 1.5 * width, i + 1.5 * width, colors="k",
                  linestyles="--", label="bandwidth bound" if i == 0 else None)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel(f"ms for {meta['iterations']} iterations (log scale)")
    ax.set_title(f"Sinkhorn on CPU ({meta['threads']} threads, float32, reg={meta['reg']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    plot(sys.argv[1], sys.argv[2])
