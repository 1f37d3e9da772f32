"""One figure per direction: rows are slices; columns are the source, each method's output and
the ground truth, each output labelled with its SSIM."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from midiffusion.evaluation.directions import Direction
from midiffusion.evaluation.methods import ROWS
from midiffusion.evaluation.metrics import METRIC_LABELS
from midiffusion.evaluation.results import DirectionResult
from model_store.files import atomic_path


def figure(
    d: Direction, outputs: dict[str, np.ndarray], entry: DirectionResult, n_rows: int, out_dir: Path
) -> str:
    """Write ``figure_<direction>.png`` into ``out_dir``; returns its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # rows evenly spaced over the middle of the slab: the end slices hold little brain
    n = len(d.source)
    rows = np.unique(np.linspace(0.15 * (n - 1), 0.85 * (n - 1), min(n_rows, n)).round())
    rows = rows.astype(int)
    columns = [("source", d.source)] + [(n, outputs[n]) for n in ROWS if n in outputs]
    if d.truth is not None:
        columns.append(("ground truth", d.truth))
    key = "ssim_tar" if d.truth is not None else "ssim_src"
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(1.7 * len(columns), 1.85 * len(rows)),
        dpi=100,
        squeeze=False,
    )
    for r, k in enumerate(rows):
        for c, (name, images) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(np.rot90(images[k]), cmap="gray", vmin=0, vmax=1)  # anterior up
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"slice {int(d.slice_index[k])}", fontsize=7)
            if name in outputs:
                value = entry.methods[name].per_slice[k][key]
                ax.set_xlabel(f"{METRIC_LABELS[key]} {value:.2f}", fontsize=7)
    fig.suptitle(f"{d.name} ({d.set_name})", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"figure_{d.name.replace('->', '_to_').replace(' ', '_')}.png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path.name
