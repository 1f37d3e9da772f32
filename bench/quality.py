"""What a job's quality report costs beside its translation: prints a table.

    python bench/quality.py            # the mni-synth T2w volume (48 slices of 128x128)

The worker calls ``Translator.translate_with_report``, which adds to ``translate``: the draws'
spread (sums kept while sampling), NMI and clean LMI of output and source, the out-of-training
share, and mapping the spread back to the input's geometry. This times those extras alone, on
the grid slices of a real volume, with the source's own translation stand-in (the time does
not depend on the values): median of 3 calls, after one warm-up call. Sampling itself costs
about 7 s per slice on a 2-core CPU (docs/performance.md), so compare with 48 x 7 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from midiffusion.pipeline.quality import DrawSpread, translation_quality
from midiffusion.pipeline.translate import outside_training_fraction, plan_slices
from model_store import ModelStore

SET = Path.home() / ".cache" / "midiffusion" / "sets" / "mni-synth" / "t2w.nii.gz"


def median_seconds(call, repeats: int = 3) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=SET, help="a NIfTI volume")
    parser.add_argument("--samples", type=int, default=4, help="draws averaged (v10: 4)")
    args = parser.parse_args()
    card = ModelStore().card("t1w")
    image = nib.load(args.volume)
    volume = np.asarray(image.dataobj, np.float32)
    plan, ras, ras_mask = plan_slices(image, volume, card.grid_size)
    src = plan.to_grid(ras)
    msk = plan.to_grid(ras_mask.astype(np.float32)) > 0.5
    keep = np.nonzero(msk.reshape(len(msk), -1).any(axis=1))[0]
    rng = np.random.default_rng(0)
    draws = np.clip(
        src[keep][None] + 0.1 * rng.standard_normal((args.samples, *src[keep].shape)), 0, 1
    )

    def spread() -> np.ndarray:
        sums = DrawSpread()
        for d in draws:
            sums.add(0, d[None].astype(np.float32))
        return sums.std()

    std = spread()
    figures = {
        "draws' spread (sums and std)": lambda: spread(),
        "NMI + clean LMI to the source": lambda: translation_quality(
            src[keep], src[keep], msk[keep], std
        ),
        "out-of-training share": lambda: outside_training_fraction(plan, msk, card),
        "spread back to the input's geometry": lambda: plan.from_grid(np.where(msk, 0.1, 0.0)),
    }
    print(
        f"{args.volume.name}: {len(keep)} foreground slices of {card.grid_size}^2, "
        f"{args.samples} draws"
    )
    print("| extra | seconds |\n|---|---|")
    total = 0.0
    for name, call in figures.items():
        seconds = median_seconds(call)
        total += seconds
        print(f"| {name} | {seconds:.3f} |")
    print(f"| all | {total:.3f} |")


if __name__ == "__main__":
    main()
