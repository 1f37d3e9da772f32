"""``midiffusion evaluate``: every method of the benchmark in one run (docs/evaluation.md).

Writes ``results.json``, ``results.md``, ``figure_<direction>.png`` and ``metrics.json`` into
``--out`` (``midiffusion.evaluation``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from midiffusion.evaluation.directions import DIRECTIONS, PROTOCOLS, EvaluationError
from midiffusion.evaluation.methods import METHOD_GROUPS
from midiffusion.evaluation.reports import markdown_report
from midiffusion.evaluation.runner import EvalSettings, evaluate
from midiffusion.pipeline.devices import DEVICE_HELP
from midiffusion.pipeline.precision import PRECISION_HELP, PRECISIONS
from model_store.card import DEFAULT_PRESET, INPUT_KINDS, PRESET_NAMES, SAMPLER_NAMES

if TYPE_CHECKING:
    import model_store


def configure(parser: argparse.ArgumentParser) -> None:
    d = EvalSettings()  # the defaults, defined once
    parser.add_argument(
        "--protocol",
        nargs="+",
        choices=PROTOCOLS,
        default=d.protocols,
        help="mni-synth (T2w/PDw/FLAIR -> T1, against MNI152 T1), head-synth (the same on a "
        "held-out whole head; head-synth-256 at twice the grid) and/or ct-real (CT -> T1); "
        "head-tune (the same on a training "
        "subject's head) is for choosing settings, never for reporting",
    )
    parser.add_argument(
        "--directions",
        nargs="+",
        choices=list(DIRECTIONS),
        help="a subset of the directions (default: every direction of the protocols)",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_GROUPS, default=d.methods, help="methods to run"
    )
    parser.add_argument(
        "-o", "--out", type=Path, default=Path("out/evaluation"), help="output folder"
    )
    parser.add_argument("-m", "--model", help="clean model name (default: the store's default)")
    parser.add_argument(
        "--version", type=int, help="model version (default: the aliased one, else the latest)"
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="model store root (default: $MIDIFF_MODEL_DIR or the shipped model_store/models)",
    )
    parser.add_argument("--data-dir", type=Path, help="data root (default: $MIDIFF_DATA_DIR)")
    parser.add_argument(
        "--faithful-model", help="a model trained with faithful LMI (default: none, not run)"
    )
    parser.add_argument(
        "--faithful-steps",
        type=int,
        default=d.faithful_steps,
        help="DDPM steps for the faithful method (1000 = the published chain; fewer subsample it)",
    )
    parser.add_argument(
        "--slices", type=int, help="evenly spaced slices per direction (default: all)"
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=DEFAULT_PRESET,
        help="the card's sampling defaults or its fast preset; --steps etc. override either",
    )
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model card's)")
    parser.add_argument(
        "--sampler", choices=SAMPLER_NAMES, help="sampler (default: the model card's)"
    )
    parser.add_argument("--guidance", type=float, help="LMI guidance (default: the model card's)")
    parser.add_argument(
        "--samples", type=int, help="translations averaged per slice (default: the card's)"
    )
    parser.add_argument(
        "--antithetic",
        choices=("on", "off"),
        help="pair the averaged draws on opposite noises (default: the model card's)",
    )
    parser.add_argument("--sdedit-t0", type=int, default=d.sdedit_t0, help="SDEdit start timestep")
    parser.add_argument(
        "--sdedit-steps",
        type=int,
        default=d.sdedit_steps,
        help="SDEdit follows the levels of a chain of this many steps below t0",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed of every method")
    parser.add_argument(
        "--more-seeds",
        type=int,
        nargs="+",
        default=d.more_seeds,
        help="rerun the stochastic methods at these seeds too and report the spread",
    )
    parser.add_argument(
        "--batch-size", type=int, help="slices per sampling batch (default: 32 on a GPU, else 8)"
    )
    parser.add_argument("--device", default=d.device, help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision, help=PRECISION_HELP)
    parser.add_argument("--prior-set", default=d.prior_set, help="histogram baseline's T1 prior")
    parser.add_argument("--no-fid", action="store_true", help="skip FID (Inception on the CPU)")
    parser.add_argument(
        "--figure-rows", type=int, default=d.figure_rows, help="slices shown per figure"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--single-slices",
        action="store_true",
        help="instead of the benchmark: translate each slice alone as a 2D input, with the "
        "card's defaults, against the identity and the inversion (single-slices.md in --out)",
    )
    parser.add_argument(
        "--anatomy",
        choices=("auto", *INPUT_KINDS),
        default="auto",
        help="with --single-slices: what each slice is said to show, as translate --anatomy "
        "says it (auto: judged by its size)",
    )


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        protocols=list(args.protocol),
        directions=args.directions,
        methods=list(args.methods),
        model=args.model,
        version=args.version,
        faithful_model=args.faithful_model,
        faithful_steps=args.faithful_steps,
        slices=args.slices,
        preset=args.preset,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        samples=args.samples,
        antithetic=None if args.antithetic is None else args.antithetic == "on",
        sdedit_t0=args.sdedit_t0,
        sdedit_steps=args.sdedit_steps,
        seed=args.seed,
        more_seeds=list(args.more_seeds),
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        prior_set=args.prior_set,
        fid=not args.no_fid,
        figure_rows=args.figure_rows,
    )


def run(args: argparse.Namespace) -> int:
    from midiffusion.evaluation.fid import FIDUnavailableError
    from model_store import ModelIntegrityError, ModelNotFoundError, ModelStore

    try:
        if args.single_slices:
            return run_single_slices(args, ModelStore(args.store))
        if args.anatomy != "auto":
            raise EvaluationError(
                "--anatomy applies to --single-slices only: a volume's kind is judged by its size"
            )
        results = evaluate(
            settings_from_args(args),
            args.out,
            store=ModelStore(args.store),
            data_root=args.data_dir,
            progress=not args.quiet,
        )
    except (
        EvaluationError,
        FileNotFoundError,
        ModelNotFoundError,
        ModelIntegrityError,
        FIDUnavailableError,
        ValueError,
    ) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(markdown_report(results))
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    for name in results.figures.values():
        print(f"figure: {args.out / name}")
    return 0


def run_single_slices(args: argparse.Namespace, store: model_store.ModelStore) -> int:
    """``--single-slices``: each slice of the protocols' directions translated alone
    (``midiffusion.evaluation.single_slices``), at ``--seed`` and ``--more-seeds``."""
    import nibabel as nib
    from tqdm import tqdm

    from midiffusion.cli.translate import said_anatomy
    from midiffusion.evaluation.directions import direction_names, load_directions
    from midiffusion.evaluation.single_slices import markdown, score_direction
    from midiffusion.pipeline.devices import resolve_device
    from midiffusion.pipeline.translate import Translator

    verified = store.verified(args.model or store.default_name(), args.version)
    device = resolve_device(args.device)
    translator = Translator.load(verified.card, verified.weights_path, device, args.precision)
    names = direction_names(list(args.protocol), args.directions)
    directions = [
        d
        for d in load_directions(names, args.slices, args.data_dir, translator.grid)
        if d.truth is not None
    ]
    if not directions:
        raise EvaluationError(f"no direction of {list(args.protocol)} has a truth to score")

    kind = said_anatomy(args.anatomy)

    def translate(image: nib.Nifti1Image, seed: int) -> nib.Nifti1Image:
        return translator.translate(
            image, seed=seed, preset=args.preset, steps=args.steps, kind=kind
        )

    scores = []
    for seed in [args.seed, *args.more_seeds]:
        for direction in tqdm(directions, desc=f"seed {seed}", disable=args.quiet):
            scores.append(score_direction(direction, translate, seed))
    model = f"{verified.card.name} v{verified.card.version}"
    if kind is not None:
        model += f" (`--anatomy {kind}`: every slice said to show a {kind})"
    table = markdown(scores, model, ", ".join(args.protocol))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "single-slices.md").write_text(table)
    print(table)
    print(f"table: {args.out / 'single-slices.md'}")
    return 0
