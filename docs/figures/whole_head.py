"""The README's whole-head figure: the held-out head (head-synth's subject) as a T2w volume,
translated to T1 by a stored model, shown in three planes beside its source and its truth.

    .venv/bin/python docs/figures/whole_head.py -m t1w -o docs/figures/whole-head.png

The volume is the pydeface mean head resampled to 2 mm axial slices on a 160 x 160 in-plane grid
(head-synth's recipe at a finer slice spacing), so the reformats show what a user's volume gives.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np

from midiffusion.data import head_synth
from midiffusion.data.recipe import Recipe
from midiffusion.data.sets import data_dir
from midiffusion.pipeline.translate import Translator
from model_store import ModelStore

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def held_out_head(slice_mm: float, size: int = 160) -> dict[str, nib.Nifti1Image]:
    """T1 truth, T2w source and head mask of the held-out head on a ``slice_mm`` axial slab."""
    vols, affine = head_synth.on_grid(data_dir(), Recipe(), size=size, slice_mm=slice_mm)
    return {k: nib.Nifti1Image(vols[k].astype(np.float32), affine) for k in ("t1", "t2w", "mask")}


def three_planes(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, sagittal and coronal mid-planes of a RAS volume, upright for display."""
    i, j, k = (n // 2 for n in volume.shape)
    return [np.rot90(volume[:, :, k]), np.rot90(volume[i, :, :]), np.rot90(volume[:, j, :])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=None, help="model name (default: the store's)")
    parser.add_argument("--version", type=int, default=None, help="model version")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/figures/whole-head.png"))
    parser.add_argument("--slice-mm", type=float, default=2.0, help="axial slice spacing (mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="sampling steps (default: the card's)")
    parser.add_argument("--samples", type=int, help="draws averaged (default: the card's)")
    args = parser.parse_args()

    store = ModelStore()
    verified = store.verified(args.model or store.default_name(), args.version)
    translator = Translator.load(verified.card, verified.weights_path)
    vols = held_out_head(args.slice_mm)
    start = time.perf_counter()
    out = translator.translate(vols["t2w"], seed=args.seed, steps=args.steps, samples=args.samples)
    seconds = time.perf_counter() - start
    rows = {
        "source (T2w)": np.asarray(vols["t2w"].dataobj),
        f"{verified.card.name} v{verified.card.version}": np.asarray(out.dataobj),
        "truth (T1)": np.asarray(vols["t1"].dataobj),
    }
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.6), dpi=100)
    for r, (label, volume) in enumerate(rows.items()):
        for c, (plane, image) in enumerate(
            zip(("axial", "sagittal", "coronal"), three_planes(volume), strict=True)
        ):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane)
            if c == 0:
                ax.set_ylabel(label)
    n = vols["t2w"].shape[2]
    fig.suptitle(
        f"held-out whole head, T2w -> T1: {n} axial slices of {args.slice_mm:g} mm, "
        f"{seconds:.0f} s on this machine, seed {args.seed}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"{args.out}: {n} slices translated in {seconds:.1f} s")


if __name__ == "__main__":
    main()
