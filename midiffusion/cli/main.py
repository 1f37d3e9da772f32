"""The ``midiffusion`` command line.

Each sub-command lives in its own module, which exposes ``configure(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so
``midiffusion --help`` stays fast and a missing optional dependency breaks one command,
not all of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("midiffusion.cli.demo", "run the end-to-end demo on registry-shipped data"),
    "data": ("midiffusion.cli.data", "fetch registry-shipped data and build the data sets"),
    "train": ("midiffusion.cli.train", "train a target-modality score model (resumable)"),
    "models": ("midiffusion.cli.models", "list, show, verify and publish stored models"),
    "translate": (
        "midiffusion.cli.translate",
        "translate a NIfTI volume, a PNG slice or a DICOM series with a stored model",
    ),
    "evaluate": (
        "midiffusion.cli.evaluate",
        "run the benchmark: every method, same slices and seed",
    ),
    "serve": (
        "midiffusion.cli.serve",
        "run the REST gateway (and an embedded worker when no Redis is configured)",
    ),
    "dicom-listen": (
        "midiffusion.cli.dicom_listen",
        "a DICOM C-STORE listener: each series received becomes a job, its result is sent on",
    ),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, except where the help already says it: an option
    left unset (None) takes what its help names, such as the model card's value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="midiffusion",
        description="Zero-shot cross-modality medical image translation (MIDiffusion).",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        # Arguments are declared by the command's module, imported only when it runs.
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of one command, with the arguments its module declares, and the module."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(
        prog=f"midiffusion {name}", description=COMMANDS[name][1], formatter_class=HelpFormatter
    )
    module.configure(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module declare its own arguments.
    if argv and argv[0] in COMMANDS:
        cmd_parser, module = command_parser(argv[0])
        args = cmd_parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    parser.parse_args(argv)  # prints help / usage errors and exits
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
