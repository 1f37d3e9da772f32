"""Print the project's pinned runtime dependencies (pyproject.toml), one per line, leaving out
the distributions named after ``--without``. The Dockerfile installs the gateway's image from
``--without torch safetensors matplotlib``: the gateway never imports them."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def requirements(pyproject: Path, without: set[str]) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {d: re.split(r"[\[=<>!~; ]", d, maxsplit=1)[0].lower() for d in deps}
    unknown = {w.lower() for w in without} - set(names.values())
    if unknown:
        raise SystemExit(f"not dependencies of the project: {', '.join(sorted(unknown))}")
    return [d for d in deps if names[d] not in {w.lower() for w in without}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--without", nargs="*", default=[], help="distributions to leave out")
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, set(args.without))))


if __name__ == "__main__":
    main()
