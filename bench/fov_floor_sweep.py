"""The field-of-view floor for small inputs, on the tuning data only: single slices translated
alone with each floor, SSIM and PSNR to the truth.

    python bench/fov_floor_sweep.py --floors 0 173 190 210 [--seeds 0 1 2 3] [--slices 8]

Each slice of ``head-tune``'s directions, and of its brain cut out as a skull-stripped set
(``sampling_sweep.py --brains`` says how), is written as its own (H, W) NIfTI with its spacing
in mm and translated by ``Translator.translate`` as ``midiffusion translate`` would, with
``SMALLEST_FOV_MM`` (``midiffusion/pipeline/translate.py``) set to each floor (0: a slice framed
by its own extent). Scores as ``evaluate --single-slices``: every image rescaled by its own
99.5th percentile, SSIM and PSNR inside the mask. The shipped floor is not chosen here: it is
the smallest field of view of the training volumes. This sweep shows what it does.
"""

from __future__ import annotations

import argparse

import numpy as np
from sampling_sweep import brain_cases, head_cases

import midiffusion.pipeline.translate as translate
from midiffusion.evaluation.metrics import psnr, ssim
from midiffusion.evaluation.single_slices import rescaled, slice_image
from model_store import ModelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floors", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--version", type=int, default=None)
    args = parser.parse_args()
    v = ModelStore().verified("t1w", args.version)
    t = translate.Translator.load(v.card, v.weights_path, "cpu")
    cases = head_cases(t.grid, args.slices) + brain_cases(t.grid, args.slices)
    print(f"model t1w v{v.card.version}; {len(cases)} directions x {args.slices} slices")
    for seed in args.seeds:
        for floor in args.floors:
            translate.SMALLEST_FOV_MM = floor
            cells = []
            for name, source, truth, mask, pixel_mm2 in cases:
                scores = []
                for s, g, m in zip(source, truth, mask, strict=True):
                    image = slice_image(s, pixel_mm2)
                    out = np.asarray(t.translate(image, seed=seed).dataobj, np.float32)
                    o, g01 = rescaled(out, m), rescaled(g, m)
                    scores.append((ssim(o, g01, m), psnr(o, g01, m)))
                s_mean, p_mean = np.mean(scores, axis=0)
                cells.append(f"{name} {s_mean:.3f} / {p_mean:.2f} dB")
            print(f"floor {floor:g} mm, seed {seed}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
