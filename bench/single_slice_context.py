"""What a whole-head slice loses when it is translated alone, on the tuning data only.

    python bench/single_slice_context.py [--seeds 0 1] [--slices 8] [--version N]

For each of ``head-tune``'s whole-head directions, every slice is scored (SSIM inside the mask,
images rescaled as ``evaluate --single-slices`` does) four ways:

- ``alone``: written as its own (H, W) NIfTI with its spacing in mm and translated as
  ``midiffusion translate`` would;
- ``alone, as a head``: the same, with the input judged a whole head whatever its area (the
  card's head anchor and head lookup weight);
- ``in the volume``: the direction's slices stacked into one volume and translated together;
- ``in the volume, no lookup``: the same without the source lookup;

and the identity (the source itself) beside them.

It then translates the brain cut out of ``head-tune`` (``sampling_sweep.py --brains``) alone,
judged by its area and judged a head, to show what judging a brain a head costs. The kind is
forced by setting ``HEAD_AREA_CM2`` (``midiffusion/pipeline/intensity.py``) to 0.
"""

from __future__ import annotations

import argparse

import numpy as np
from sampling_sweep import brain_cases, head_cases

import midiffusion.pipeline.intensity as intensity
from midiffusion.evaluation.metrics import ssim
from midiffusion.evaluation.single_slices import rescaled, slice_image
from midiffusion.pipeline.translate import Translator
from model_store import ModelStore

HEAD_AREA = intensity.HEAD_AREA_CM2


def alone(
    t: Translator, source: np.ndarray, pixel_mm2: float, seed: int, as_head: bool
) -> np.ndarray:
    intensity.HEAD_AREA_CM2 = 0.0 if as_head else HEAD_AREA
    try:
        return np.stack(
            [np.asarray(t.translate(slice_image(s, pixel_mm2), seed=seed).dataobj) for s in source]
        )
    finally:
        intensity.HEAD_AREA_CM2 = HEAD_AREA


def in_volume(
    t: Translator, source: np.ndarray, pixel_mm2: float, seed: int, lookup: bool
) -> np.ndarray:
    out = t.translate(
        slice_image(np.stack(list(source), -1), pixel_mm2, 8.0), seed=seed, lookup=lookup
    )
    return np.moveaxis(np.asarray(out.dataobj), -1, 0)


def scores(out: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.array(
        [ssim(rescaled(o, m), rescaled(g, m), m) for o, g, m in zip(out, truth, mask, strict=True)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--version", type=int, help="t1w version (default: the serving one)")
    args = parser.parse_args()
    v = ModelStore().verified("t1w", args.version)
    t = Translator.load(v.card, v.weights_path, "cpu")
    heads, brains = head_cases(t.grid, args.slices), brain_cases(t.grid, args.slices)
    for label, cases in (("head", heads), ("brain", brains)):
        _, _, _, mask, pixel_mm2 = cases[0]
        areas = " ".join(f"{m.sum() * pixel_mm2 / 100:.0f}" for m in mask)
        print(f"{label} sections, cm^2: {areas}")
    for name, source, truth, mask, _ in heads:
        s = scores(source, truth, mask)
        print(f"{name} identity: mean {s.mean():.3f} [{' '.join(f'{x:.2f}' for x in s)}]")
    for seed in args.seeds:
        for name, source, truth, mask, pixel_mm2 in heads:
            ways = {
                "alone": alone(t, source, pixel_mm2, seed, False),
                "alone, as a head": alone(t, source, pixel_mm2, seed, True),
                "in the volume": in_volume(t, source, pixel_mm2, seed, True),
                "in the volume, no lookup": in_volume(t, source, pixel_mm2, seed, False),
            }
            for way, out in ways.items():
                s = scores(out, truth, mask)
                per_slice = " ".join(f"{x:.2f}" for x in s)
                print(f"seed {seed} {name} {way}: mean {s.mean():.3f} [{per_slice}]", flush=True)
        for name, source, truth, mask, pixel_mm2 in brains:
            cells = []
            for way, as_head in (("alone", False), ("alone, as a head", True)):
                out = alone(t, source, pixel_mm2, seed, as_head)
                cells.append(f"{way} {scores(out, truth, mask).mean():.3f}")
            print(f"seed {seed} {name}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
