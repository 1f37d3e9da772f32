"""``head-tune``: the whole-head *tuning* set, on which sampling settings may be chosen.

The same recipe as ``head-synth`` (``head_synth.on_grid``: tissue classes estimated on a T1 head,
T2w, PDw and FLAIR by the signal equations, bias field and noise), applied to Colin27's head
(``ch2``), a training subject, with other noise seeds. Settings are chosen here and reported on
``head-synth``, whose head no setting and no training step has seen. Because the prior was
trained on this head's T1, figures on this set are optimistic and are never reported as results.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from midiffusion.data.head_synth import head_volumes, on_grid
from midiffusion.data.recipe import Recipe
from midiffusion.data.volumes import BuiltSet

SOURCE = "colin27"


def build(root: Path, recipe: Recipe, log: Callable[[str], None] = print) -> BuiltSet:
    vols, affine = on_grid(
        root, recipe, n_slices=recipe.synth_slices, subject=(SOURCE, "head"), seed=200
    )
    mask = vols["mask"]
    log(f"  head-tune: {mask.shape[2]} slices of {mask.shape[0]}x{mask.shape[1]}, whole head")
    notes = [
        "tuning set: Colin27's head (a t1-train subject); choose settings here, never report",
        "t2w, pdw, flair synthesised as in head-synth (head_synth.py), other noise seeds",
        "mask is the whole head; brain is the estimated brain inside it",
    ]
    return BuiltSet("tuning", head_volumes(vols, affine, SOURCE), [SOURCE], notes)
