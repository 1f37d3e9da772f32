"""``midiffusion data fetch | build``: put registry-shipped sources in the cache, build sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from midiffusion.data.errors import DataError
from midiffusion.data.recipe import SET_NAMES, Recipe
from midiffusion.data.sets import data_dir
from midiffusion.data.sources import SOURCES, source_by_name


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch_help = "put every data source into the data cache (sha256-checked)"
    fetch = sub.add_parser(
        "fetch", help=fetch_help, description=fetch_help, formatter_class=parser.formatter_class
    )
    fetch.add_argument(
        "--sources",
        type=_csv,
        default=[s.name for s in SOURCES],
        help="comma-separated source names (default: all: "
        + ", ".join(s.name for s in SOURCES)
        + ")",
    )
    build_help = "build the data sets from the cached sources"
    build = sub.add_parser(
        "build", help=build_help, description=build_help, formatter_class=parser.formatter_class
    )
    build.add_argument(
        "--sets",
        type=_csv,
        default=list(SET_NAMES),
        help=f"comma-separated set names (default: {','.join(SET_NAMES)})",
    )
    build.add_argument("--grid", type=int, default=Recipe.grid, help="model grid size (square)")
    build.add_argument(
        "--slices",
        type=int,
        default=Recipe.synth_slices,
        help="number of evenly spaced mni-synth slices",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    for p in (fetch, build):
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="data cache (default: $MIDIFF_DATA_DIR or ~/.cache/midiffusion)",
        )


def _fetch(args: argparse.Namespace, root: Path) -> int:
    from midiffusion.data.sources import fetch

    chosen = tuple(source_by_name(n) for n in args.sources)
    print(f"data cache: {root}")
    report = fetch(root, chosen)
    if report.skipped:
        print(
            f"skipped (no apt-get/dpkg on this machine): {', '.join(report.skipped)}; "
            "the sets that need them cannot be built here"
        )
    print(
        f"{len(report.fetched)} fetched, {len(report.cached)} already cached, "
        f"{len(report.skipped)} skipped, {len(report.failed)} failed"
    )
    return 1 if report.failed else 0


def _build(args: argparse.Namespace, root: Path) -> int:
    from midiffusion.data.build import build

    unknown = [s for s in args.sets if s not in SET_NAMES]
    if unknown:
        raise DataError(
            f"unknown set(s) {', '.join(unknown)}; the sets are: {', '.join(SET_NAMES)}"
        )
    if args.grid < 16:
        raise DataError(f"--grid {args.grid} is too small; use 16 or more (default 128)")
    if args.slices < 2:
        raise DataError(f"--slices {args.slices} is too small; use 2 or more (default 48)")
    recipe = Recipe(grid=args.grid, synth_slices=args.slices)
    build(args.sets, root, recipe, force=args.force)
    return 0


def run(args: argparse.Namespace) -> int:
    root = (args.data_dir or data_dir()).expanduser()
    try:
        if args.action == "fetch":
            return _fetch(args, root)
        return _build(args, root)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
