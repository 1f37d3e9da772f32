"""Source-lookup weights on the tuning data only: SSIM and PSNR to the truth for each weight.

    python bench/lookup_sweep.py --weights 0 0.25 0.5 0.75 1 [--seeds 0 1 2 3] [--brains]
                                 [--bandwidth 0.02] [--version N]

Each direction of ``head-tune`` (or, with ``--brains``, its brain cut out as a skull-stripped
set; ``sampling_sweep.py`` says how) is translated once per seed with the card's sampling, then
read back through its source at every weight (``midiffusion/pipeline/source_lookup.py``) and
anchored as the evaluation anchors. Per weight it prints the mean over seeds and, against the
first weight listed (give 0 first), the worst seed's change (``sampling_sweep.print_summary``):
the figures the card's lookup weights are chosen by (MODEL_CARD.md).
"""

from __future__ import annotations

import argparse

from sampling_sweep import add_tuning_arguments, print_summary, score, tuning_cases

from midiffusion.pipeline.intensity import input_kind
from midiffusion.pipeline.source_lookup import apply_lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--bandwidth", type=float, default=0.02)
    add_tuning_arguments(parser)
    args = parser.parse_args()
    t, cases = tuning_cases(args)
    # scores[weight][direction] = [(ssim, psnr) per seed]
    scores: dict[float, dict[str, list[tuple[float, float]]]] = {w: {} for w in args.weights}
    for seed in args.seeds:
        for name, source, truth, mask, pixel_mm2 in cases:
            kind = input_kind(mask, pixel_mm2)
            sampled = t.translate_slices(source, seed=seed, kind=kind)
            for w in args.weights:
                looked = apply_lookup(sampled, source, mask, w, args.bandwidth)
                out = t.anchor(looked, mask, kind)
                scores[w].setdefault(name, []).append(score(out, truth, mask))
        print(f"seed {seed} done", flush=True)
    print_summary({f"weight {w:g}": directions for w, directions in scores.items()})


if __name__ == "__main__":
    main()
