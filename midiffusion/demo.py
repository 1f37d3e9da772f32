"""``midiffusion demo``: show what the project can do today, and say what is still missing."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="folder for the demo's outputs")


def run(args: argparse.Namespace) -> int:
    print("midiffusion demo: the LMI operator, data, model and translation are not built yet.")
    print(f"nothing was written to {args.out}")
    return 0
