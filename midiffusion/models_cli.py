"""``midiffusion models list|show|verify|publish``: the model store from the command line."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from model_store import ModelIntegrityError, ModelNotFoundError, ModelStore


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        help="model store root (default: $MIDIFF_MODEL_DIR or the shipped model_store/models)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every model and version")
    show = sub.add_parser("show", help="a model's card and metrics")
    show.add_argument("name")
    show.add_argument("--version", type=int)
    verify = sub.add_parser("verify", help="check weights against the card's sha256")
    verify.add_argument("name", nargs="?", help="default: every model")
    verify.add_argument("--version", type=int)
    pub = sub.add_parser("publish", help="store a training run's EMA weights as a new version")
    pub.add_argument("run", type=Path, help="training run folder (midiffusion train --out)")
    pub.add_argument("--name", required=True)
    pub.add_argument("--target-modality", required=True)
    pub.add_argument("--sampler", default="ddim")
    pub.add_argument("--steps", type=int, default=20)
    pub.add_argument("--guidance", type=float, default=1.0)
    pub.add_argument("--notes", default="")
    pub.add_argument("--licence", action="append", default=[], help="data licence note")
    pub.add_argument("--metrics", type=Path, help="metrics.json to store beside the weights")


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
        elif args.action == "publish":
            from midiffusion.train import export_model

            with tempfile.TemporaryDirectory() as tmp:
                weights = Path(tmp) / "weights.safetensors"
                card = export_model(
                    args.run,
                    name=args.name,
                    target_modality=args.target_modality,
                    out_weights=weights,
                    data_licences=args.licence,
                    notes=args.notes,
                    sampling={
                        "sampler": args.sampler,
                        "steps": args.steps,
                        "guidance": args.guidance,
                    },
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
