"""``head-synth-256``: the held-out head of ``head-synth`` at about its scan's own resolution.

The same head, recipe and noise seeds as ``head-synth``, on a 256 x 256 grid over the same
head-sized field of view (about 0.9 mm pixels; the scan has 1 mm). The model works on 128 x 128,
so an evaluation here measures what a user gets from a full-resolution scan: the translation is
made at the model's grid and brought back, and it is scored against the full-resolution truth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from midiffusion.data.head_synth import SOURCE, head_volumes, on_grid
from midiffusion.data.recipe import Recipe
from midiffusion.data.volumes import BuiltSet

FACTOR = 2  # the grid is FACTOR x the recipe's model grid


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    vols, affine = on_grid(root, recipe, size=FACTOR * recipe.grid, n_slices=recipe.synth_slices)
    mask = vols["mask"]
    log(f"  head-synth-256: {mask.shape[2]} slices of {mask.shape[0]}x{mask.shape[1]}")
    notes = [
        "head-synth's held-out head (pydeface mean head) on a grid twice the model's",
        "t2w, pdw, flair synthesised as in head-synth (head_synth.py), the same seeds",
        "mask is the whole head; brain is the estimated brain inside it",
    ]
    return BuiltSet("evaluation", head_volumes(vols, affine, SOURCE), [SOURCE], notes)
