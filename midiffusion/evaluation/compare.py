"""Two evaluations of one method, seed by seed: is the new one equal or better?

    python -m midiffusion.evaluation.compare --old DIR [DIR ...] --new DIR [DIR ...]

Each DIR is a ``midiffusion evaluate`` output folder (its ``results.json``); several folders on a
side are merged, so seeds run apart (``--seed 1 --more-seeds 2`` in a second run) count
together. Per direction and seed it prints the method's SSIM and PSNR to the truth (SSIM to the
source where a direction has no truth, as ct-real) and whether the new figure is within the
tolerance of the old one or better. Only directions and seeds both sides measured are compared.

A seed is one draw of the whole volume's noise, and two samplers draw differently from the same
seed, so a single seed's difference mixes the change with luck. After the seed-by-seed verdict
(which sets the exit status) it therefore also prints each direction's mean over the seeds both
sides measured, beside each side's range over those seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

SSIM_TOLERANCE = 0.005
PSNR_TOLERANCE = 0.1  # dB
METRICS = ("ssim_tar", "psnr", "ssim_src")

Figures = dict[tuple[str, int], dict[str, float]]  # (direction, seed) -> metric -> value


def seed_figures(folders: list[Path], method: str = "midiffusion") -> Figures:
    """Every (direction, seed) figure of ``method`` in the folders' results.json."""
    out: Figures = {}
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        for name, direction in results["directions"].items():
            rows = direction.get("seeds", {}).get(method)
            if rows is None:  # one seed only: the method's summary at the run's seed
                summary = direction["methods"].get(method, {}).get("summary") or {}
                means = {k: v["mean"] for k, v in summary.items() if k in METRICS}
                rows = [{"seed": results["settings"]["seed"], **means}] if means else []
            for row in rows:
                out[(name, int(row["seed"]))] = {k: row[k] for k in METRICS if k in row}
    return out


def _compared(old: Figures, new: Figures, key: tuple[str, int]) -> list[tuple[str, float]]:
    """The (metric, tolerance) pairs both sides have for ``key``: with a ground truth SSIM and
    PSNR to it, without one (ct-real) SSIM to the source."""
    truth = "ssim_tar" in old[key]
    pairs = [("ssim_tar", SSIM_TOLERANCE), ("psnr", PSNR_TOLERANCE)] if truth else []
    return [
        (m, t)
        for m, t in pairs or [("ssim_src", SSIM_TOLERANCE)]
        if m in old[key] and m in new[key]
    ]


def compare(old: Figures, new: Figures) -> tuple[list[str], bool]:
    """Markdown table rows comparing the two, and whether the new one holds everywhere."""
    rows = [
        "| direction | seed | metric | old | new | difference | new equal or better |",
        "|---|---|---|---|---|---|---|",
    ]
    holds = True
    for key in sorted(set(old) & set(new)):
        for metric, tolerance in _compared(old, new, key):
            a, b = old[key][metric], new[key][metric]
            ok = b >= a - tolerance
            holds &= ok
            rows.append(
                f"| {key[0]} | {key[1]} | {metric} | {a:.3f} | {b:.3f} | {b - a:+.3f} | "
                f"{'yes' if ok else '**no**'} |"
            )
    return rows, holds


def compare_over_seeds(old: Figures, new: Figures) -> tuple[list[str], bool]:
    """Markdown table rows comparing each direction's mean over the seeds both sides measured,
    and whether the new means hold everywhere."""
    rows = [
        "| direction | seeds | metric | old mean (range) | new mean (range) | difference "
        "| new equal or better |",
        "|---|---|---|---|---|---|---|",
    ]
    holds = True
    keys = sorted(set(old) & set(new))
    for direction in sorted({d for d, _ in keys}):
        seeds = [k for k in keys if k[0] == direction]
        for metric, tolerance in _compared(old, new, seeds[0]):
            a = [old[k][metric] for k in seeds]
            b = [new[k][metric] for k in seeds]
            ok = mean(b) >= mean(a) - tolerance
            holds &= ok
            rows.append(
                f"| {direction} | {len(seeds)} | {metric} | {mean(a):.3f} ({min(a):.3f}-"
                f"{max(a):.3f}) | {mean(b):.3f} ({min(b):.3f}-{max(b):.3f}) | "
                f"{mean(b) - mean(a):+.3f} | {'yes' if ok else '**no**'} |"
            )
    return rows, holds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, nargs="+", required=True, help="evaluation folders")
    parser.add_argument("--new", type=Path, nargs="+", required=True, help="evaluation folders")
    parser.add_argument("--method", default="midiffusion", help="the method compared")
    args = parser.parse_args(argv)
    old, new = seed_figures(args.old, args.method), seed_figures(args.new, args.method)
    tolerance = f"{SSIM_TOLERANCE} SSIM and {PSNR_TOLERANCE} dB"
    rows, holds = compare(old, new)
    print("\n".join(rows))
    print(f"\nnew equal or better (within {tolerance}) everywhere: {'yes' if holds else 'no'}")
    rows, means_hold = compare_over_seeds(old, new)
    print("\nMeans over the seeds:\n\n" + "\n".join(rows))
    print(
        f"\nnew means equal or better (within {tolerance}) everywhere: "
        f"{'yes' if means_hold else 'no'}"
    )
    return 0 if holds else 1


if __name__ == "__main__":
    raise SystemExit(main())
