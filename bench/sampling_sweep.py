"""Sampling settings on the tuning data only: SSIM and PSNR to the truth for each setting.

    python bench/sampling_sweep.py --configs euler-a:16:4,euler-a:4:2:2:3 [--seeds 0 1 2]
                                   [--slices 8] [--brains] [--lookup [--lookup-from M]]
                                   [--version N]

A config is ``sampler:steps:samples[:guidance[:sigma_min]]`` (draws in antithetic pairs, as the
card's; guidance applied at noise levels sigma >= sigma_min, default 1 and 0). The data is
``head-tune`` (Colin27's whole head, a training subject; never reported), or with ``--brains``
its brain: each source and the T1 masked with the set's brain mask, cut to the brain's field of
view (larger side + 10 %, as the data recipe does) and rescaled to its 99.5th percentile, so the
model sees a skull-stripped brain as in ``mni-synth`` without touching ``mni-synth``. This is
how the card's defaults are chosen (MODEL_CARD.md); the reporting protocols never are.
Translations are anchored as the evaluation anchors them; with ``--lookup`` they are first read
back through their source with the card's weights for their kind (the source lookup and the
guided filter), as a served translation is (``--lookup-from M``: with version M's read-back
settings instead, to try M's read-back on other weights).
After the seed-by-seed lines it prints each config's mean over seeds and, against the first
config listed, the worst seed's change.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from midiffusion.data.geometry import voxel_sizes
from midiffusion.data.recipe import Recipe
from midiffusion.data.sets import load_volumes
from midiffusion.evaluation.directions import TUNING, direction_names, load_directions
from midiffusion.evaluation.metrics import psnr, ssim
from midiffusion.pipeline.intensity import input_kind
from midiffusion.pipeline.translate import Translator
from model_store import ModelStore

SOURCES = ("t2w", "pdw", "flair")
Case = tuple[str, np.ndarray, np.ndarray, np.ndarray, float]  # name, source, truth, mask, mm^2


def head_cases(grid: int, slices: int) -> list[Case]:
    names = direction_names(list(TUNING), None)
    return [
        (d.name, d.source, d.truth, d.mask, d.pixel_mm2)
        for d in load_directions(names, slices, None, grid)
    ]


def brain_cases(grid: int, slices: int) -> list[Case]:
    images = load_volumes("head-tune")
    vols = {k: np.asarray(v.dataobj, np.float32) for k, v in images.items()}
    brain = vols["brain"] > 0
    ii, jj, kk = np.nonzero(brain)
    centre = ((ii.min() + ii.max()) / 2, (jj.min() + jj.max()) / 2)
    side = max(ii.max() - ii.min(), jj.max() - jj.min()) * (1 + Recipe().fov_margin)
    # the middle of the brain's extent: its top and bottom slices are mostly partial volume
    span = kk.max() - kk.min()
    zs = np.linspace(kk.min() + 0.15 * span, kk.max() - 0.1 * span, slices).round().astype(int)
    yy, xx = np.mgrid[:grid, :grid] * side / grid
    coords = [centre[0] - side / 2 + yy, centre[1] - side / 2 + xx]

    def cut(a: np.ndarray) -> np.ndarray:
        return np.stack([ndimage.map_coordinates(a[:, :, z], coords, order=1) for z in zs])

    mask = cut(brain.astype(np.float32)) > 0.5

    def stripped(a: np.ndarray) -> np.ndarray:
        b = cut(a * brain) * mask
        return np.clip(b / np.percentile(b[mask], 99.5), 0, 1).astype(np.float32)

    truth = stripped(vols["t1"])
    # the grid's real pixel area (the largest section, 192 cm^2, is a brain's to the anchor)
    pixel_mm2 = float((side * voxel_sizes(images["brain"].affine)[0] / grid) ** 2)
    return [(f"brain {k}->T1", stripped(vols[k]), truth, mask, pixel_mm2) for k in SOURCES]


def add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """The tuning data's options, shared with ``lookup_sweep.py``."""
    parser.add_argument("--slices", type=int, default=8, help="slices per direction")
    parser.add_argument("--brains", action="store_true", help="the brain of head-tune")
    parser.add_argument("--version", type=int, help="t1w version (default: the serving one)")


def tuning_cases(args: argparse.Namespace) -> tuple[Translator, list[Case]]:
    """The stored model and the tuning cases ``add_tuning_arguments`` asked for."""
    v = ModelStore().verified("t1w", args.version)
    t = Translator.load(v.card, v.weights_path, "cpu")
    cases = (brain_cases if args.brains else head_cases)(t.grid, args.slices)
    print(f"model t1w v{v.card.version}; {len(cases)} directions x {args.slices} slices")
    return t, cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", required=True, help="sampler:steps:samples, comma-separated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--lookup", action="store_true", help="the card's source lookup and filter, as served"
    )
    parser.add_argument("--lookup-from", type=int, help="another version's read-back settings")
    add_tuning_arguments(parser)
    args = parser.parse_args()
    t, cases = tuning_cases(args)
    if args.lookup_from is not None:
        lookup = ModelStore().verified("t1w", args.lookup_from).card.sampling
        fields = ("lookup_weight", "lookup_weight_head", "lookup_bandwidth")
        fields += ("guided_weight", "guided_weight_head", "guided_eps")
        t.sampling = t.sampling.model_copy(update={f: getattr(lookup, f) for f in fields})
    # scores[config][direction] = [(ssim, psnr) per seed]
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for config in args.configs.split(","):
        sampler, steps, samples, *window = config.split(":")
        guidance, sigma_min = (float(w) for w in [*window, 1, 0][:2])
        for seed in args.seeds:
            started = time.perf_counter()
            cells = []
            for name, source, truth, mask, pixel_mm2 in cases:
                kind = input_kind(mask, pixel_mm2)
                raw = t.translate_slices(
                    source,
                    sampler=sampler,
                    steps=int(steps),
                    samples=int(samples),
                    guidance=guidance,
                    guidance_sigma_min=sigma_min,
                    seed=seed,
                    kind=kind,
                )
                out = t.finish(raw, source, mask, kind, lookup=args.lookup)
                s, p = score(out, truth, mask)
                scores.setdefault(config, {}).setdefault(name, []).append((s, p))
                cells.append(f"{name} {s:.3f} / {p:.2f} dB")
            seconds = time.perf_counter() - started
            print(f"{config} seed {seed} ({seconds:.0f} s): " + "; ".join(cells), flush=True)
    print_summary(scores)


def score(out: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and PSNR (dB) over the slices, inside their masks."""
    rows = list(zip(out, truth, mask, strict=True))
    return float(np.mean([ssim(*r) for r in rows])), float(np.mean([psnr(*r) for r in rows]))


def print_summary(scores: dict[str, dict[str, list[tuple[float, float]]]]) -> None:
    """Per setting (the first one is the reference): the mean SSIM over its directions, then per
    direction the means over seeds and the worst seed's change against the reference."""
    base = next(iter(scores.values()))
    for label, directions in scores.items():
        cells = []
        for name, rows in directions.items():
            a, b = np.asarray(rows), np.asarray(base[name])
            worst = (a - b).min(axis=0)
            cells.append(
                f"{name} {a[:, 0].mean():.3f} / {a[:, 1].mean():.2f} "
                f"(worst seed {worst[0]:+.3f} / {worst[1]:+.2f})"
            )
        overall = np.mean([np.asarray(r)[:, 0].mean() for r in directions.values()])
        print(f"{label}: mean SSIM {overall:.4f}; " + "; ".join(cells))


if __name__ == "__main__":
    main()
