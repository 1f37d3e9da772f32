"""``midiffusion models list|show|verify|samples|publish|import|default``: the model store from
the command line."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from model_store import (
    DEFAULT_SAMPLING,
    SAMPLER_NAMES,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStore,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        help="model store root (default: $MIDIFF_MODEL_DIR or the shipped model_store/models)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=parser.formatter_class
        )

    action("list", "every model and version")
    show = action("show", "a model's card and metrics")
    show.add_argument("name", help="model name")
    show.add_argument(
        "--version", type=int, help="model version (default: the aliased one, else the latest)"
    )
    verify = action("verify", "check weights against the card's sha256")
    verify.add_argument("name", nargs="?", help="model name (default: every model)")
    verify.add_argument(
        "--version", type=int, help="model version (default: the aliased one, else the latest)"
    )
    samples = action("samples", "a grid PNG of unconditional samples (the prior)")
    samples.add_argument("name", help="model name")
    samples.add_argument(
        "--version", type=int, help="model version (default: the aliased one, else the latest)"
    )
    samples.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    samples.add_argument("-n", type=int, default=16, help="number of samples")
    samples.add_argument("--steps", type=int, default=50, help="sampling steps")
    samples.add_argument("--seed", type=int, default=0, help="random seed of the noise")
    samples.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: the card's sampler")
    samples.add_argument(
        "--beside",
        metavar="SET",
        help="a training set (e.g. t1-train): put as many of its slices, drawn at random, beside "
        "the samples, and print each sample's SSIM to its nearest slice of the set",
    )
    samples.add_argument(
        "--data-dir", type=Path, help="data cache (default: $MIDIFF_DATA_DIR or the cache)"
    )
    pub = action("publish", "store a training run's EMA weights as a new version")
    pub.add_argument("run", type=Path, help="training run folder (midiffusion train --out)")
    pub.add_argument("--name", required=True, help="model name; the new version is its latest + 1")
    pub.add_argument(
        "--target-modality", required=True, help="what the model translates to, e.g. T1w"
    )
    pub.add_argument(
        "--sampling-from",
        metavar="NAME:VERSION",
        help="start from this stored card's sampling (sampler, steps, guidance and its window, "
        "samples, antithetic, the lookup and guided filter, presets); the flags below override "
        "it, the anchors are always the run's",
    )
    pub.add_argument("--sampler", choices=SAMPLER_NAMES, help="card's sampler")
    pub.add_argument("--steps", type=int, help="card's sampling steps")
    pub.add_argument("--guidance", type=float, help="card's LMI guidance")
    pub.add_argument(
        "--guidance-sigma-min",
        type=float,
        help="guidance applies at noise levels sigma >= this only (default 0: every step)",
    )
    pub.add_argument("--samples", type=int, help="translations averaged per slice")
    pub.add_argument(
        "--lookup-weight",
        type=float,
        help="how much of a skull-stripped brain's translation is read back through its source "
        "(0 to 1; default 0: off; midiffusion/pipeline/source_lookup.py)",
    )
    pub.add_argument(
        "--lookup-weight-head",
        type=float,
        help="the same for whole heads (default 0: off)",
    )
    pub.add_argument(
        "--lookup-bandwidth",
        type=float,
        help="the lookup's kernel on the source intensity, in [0, 1] units (default 0.02)",
    )
    pub.add_argument(
        "--guided-weight",
        type=float,
        help="how much of a skull-stripped brain's translation is replaced by its guided filter "
        "on the source (0 to 1; default 0: off; midiffusion/pipeline/guided_filter.py)",
    )
    pub.add_argument(
        "--guided-weight-head", type=float, help="the same for whole heads (default 0: off)"
    )
    pub.add_argument(
        "--guided-eps", type=float, help="the guided filter's regulariser (default 3e-4)"
    )
    pub.add_argument(
        "--antithetic",
        action="store_true",
        default=None,
        help="pair the averaged draws on opposite noises (samplers.noise_source)",
    )
    pub.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='set or replace one preset, e.g. fast=\'{"steps": 4, "note": "..."}\' (repeatable)',
    )
    pub.add_argument(
        "--no-anchor",
        action="store_true",
        help="do not anchor whole volumes to the training data's mean intensity "
        "(the anchor is recorded by default; it needs the run's training data)",
    )
    pub.add_argument("--notes", default="", help="free text for the card")
    pub.add_argument(
        "--licence", action="append", default=[], help="data licence note (repeatable)"
    )
    pub.add_argument("--metrics", type=Path, help="metrics.json to store beside the weights")
    imp = action("import", "install a model directory or .zip/.tar(.gz) archive (sha256-checked)")
    imp.add_argument("path", type=Path, help="a folder or archive with model.json and weights")
    default = action("default", "show or set the serving default (an alias)")
    default.add_argument("ref", nargs="?", metavar="NAME:VERSION", help="the new default")


def run(args: argparse.Namespace) -> int:
    store = ModelStore(args.store)
    try:
        if args.action == "list":
            cards = store.list()
            if not cards:
                print(f"no models in {store.root}")
            for c in cards:
                print(
                    f"{c.name}\tv{c.version}\t{c.target_modality}\t{c.grid_size}px\t"
                    f"{c.parameters:,} params\t{c.training.get('iterations', '?')} iterations"
                )
        elif args.action == "show":
            card = store.card(args.name, args.version)
            print(card.model_dump_json(indent=2))
            metrics = store.metrics(args.name, card.version)
            if metrics:
                print(json.dumps(metrics, indent=2))
        elif args.action == "verify":
            targets = (
                [(args.name, args.version)]
                if args.name
                else [(c.name, c.version) for c in store.list()]
            )
            for name, version in targets:
                v = store.verified(name, version)
                print(f"ok\t{v.card.name} v{v.card.version}\t{v.card.sha256}")
        elif args.action == "samples":
            _samples(store, args)
        elif args.action == "import":
            card = store.import_model(args.path)
            print(f"imported {card.name} v{card.version} ({card.sha256[:12]}..., verified)")
        elif args.action == "default":
            if args.ref:
                store.set_default(*_parse_ref(args.ref))
            name, version = store.default_ref()
            card = store.card(name, version)
            print(f"default: {card.name} v{card.version}")
        elif args.action == "publish":
            from midiffusion.training.export import export_model

            with tempfile.TemporaryDirectory() as tmp:
                weights = Path(tmp) / "weights.safetensors"
                card = export_model(
                    args.run,
                    name=args.name,
                    target_modality=args.target_modality,
                    out_weights=weights,
                    data_licences=args.licence,
                    notes=args.notes,
                    sampling=_publish_sampling(store, args),
                    anchor=not args.no_anchor,
                )
                metrics = json.loads(args.metrics.read_text()) if args.metrics else None
                extra = {p.name: p for p in [args.run / "loss.png"] if p.is_file()}
                stored = store.publish(card, weights, metrics=metrics, extra_files=extra)
            print(
                f"published {stored.name} v{stored.version} ({stored.sha256[:12]}...) "
                f"in {store.root / stored.name / str(stored.version)}"
            )
    except (ModelNotFoundError, ModelIntegrityError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


def _parse_ref(ref: str) -> tuple[str, int]:
    name, _, version = ref.partition(":")
    if not version.isdigit():
        raise ValueError(f"{ref!r}: give NAME:VERSION, e.g. t1w:10")
    return name, int(version)


# what `publish --sampling-from` carries over; the anchors belong to the run's training data
_CARRIED = (
    "sampler",
    "steps",
    "guidance",
    "guidance_sigma_min",
    "samples",
    "antithetic",
    "lookup_weight",
    "lookup_weight_head",
    "lookup_bandwidth",
    "guided_weight",
    "guided_weight_head",
    "guided_eps",
    "presets",
)
_CARRIED_NOTE = "carried from "


def _publish_sampling(store: ModelStore, args: argparse.Namespace) -> dict:
    """The new card's sampling: the project's defaults, or those of ``--sampling-from``, with
    every flag given on the command line applied over them."""
    sampling = DEFAULT_SAMPLING.model_dump(include=set(_CARRIED))
    if args.sampling_from:
        source = store.card(*_parse_ref(args.sampling_from))
        sampling = source.sampling.model_dump(include=set(_CARRIED))
        # a preset's note states what it traded when measured, and with which model (once: a
        # note carried on from an earlier card already names the card it was measured with)
        for preset in sampling["presets"].values():
            if not preset["note"].startswith(_CARRIED_NOTE):
                preset["note"] = f"{_CARRIED_NOTE}{source.name} v{source.version}: {preset['note']}"
    given = {k: getattr(args, k) for k in _CARRIED if getattr(args, k, None) is not None}
    sampling = {**sampling, **given}
    for item in args.preset:
        name, sep, text = item.partition("=")
        try:
            sampling["presets"][name] = json.loads(text) if sep else None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--preset {item!r}: give NAME=JSON ({exc})") from None
        if not isinstance(sampling["presets"][name], dict):
            raise ValueError(f"--preset {item!r}: give NAME=JSON, a JSON object")
    return sampling


def _samples(store: ModelStore, args: argparse.Namespace) -> None:
    from midiffusion.data.sets import training_slices
    from midiffusion.evaluation import prior_check
    from midiffusion.io.imaging import save_png

    v = store.verified(args.name, args.version)
    training = training_slices(args.beside, args.data_dir) if args.beside else None  # fail early
    images = prior_check.unconditional_samples(
        v.card, v.weights_path, args.n, args.steps, args.seed, args.sampler
    )
    if training is None:
        save_png(prior_check.tile(images), args.out)
        print(f"{args.n} unconditional samples of {v.card.name} v{v.card.version}: {args.out}")
        return
    real = prior_check.random_slices(training, args.n, args.seed)
    save_png(prior_check.beside(images, real), args.out)
    print(
        f"{args.n} unconditional samples of {v.card.name} v{v.card.version} (left) beside "
        f"{len(real)} random {args.beside} slices (right): {args.out}"
    )
    print(f"SSIM to the nearest {args.beside} slice or its mirror image (1 = a copy):")
    unseen = prior_check.unseen_real_slices(args.data_dir)
    for line in prior_check.nearest_ssim_report(images, training, unseen):
        print(f"  {line}")
