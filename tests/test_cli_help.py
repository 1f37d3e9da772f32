"""Every command's ``--help``: each argument explained, defaults shown, one meaning per short
flag across commands."""

from __future__ import annotations

import argparse

import pytest

from midiffusion.cli.main import COMMANDS, command_parser, main

# what each short flag means, in every command that has it
SHORT_FLAGS = {"-h": {"--help"}, "-m": {"--model"}, "-o": {"--out", "--output"}, "-n": {"-n"}}


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser and every sub-command's (``models show``, ``data build``, ...)."""
    found = []

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        found.append((path, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{path} {name}", sub)

    for name in COMMANDS:
        walk(name, command_parser(name)[0])
    return found


PARSERS = _parsers()


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=[p for p, _ in PARSERS])
def test_every_argument_has_help_and_defaults_are_shown(path, parser) -> None:
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), path
    # every help string formats (no stray %); argparse wraps lines after a hyphen, too
    text = " ".join(parser.format_help().split()).replace("- ", "-")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{path}: {name} has no help"
        shown = action.default is not None and action.nargs != 0
        if shown and action.option_strings and "default" not in action.help:
            assert " ".join(f"(default: {action.default})".split()) in text, (path, name)


def test_a_short_flag_means_the_same_in_every_command() -> None:
    for path, parser in PARSERS:
        for action in parser._actions:
            short = [s for s in action.option_strings if not s.startswith("--")]
            long = set(action.option_strings) - set(short)
            for flag in short:
                assert flag in SHORT_FLAGS, f"{path}: {flag} is not a known short flag"
                assert long <= SHORT_FLAGS[flag] or flag == "-n", f"{path}: {flag} means {long}"


def test_commands_that_take_a_model_name_option_accept_m() -> None:
    for path, parser in PARSERS:
        for action in parser._actions:
            if "--model" in action.option_strings:
                assert "-m" in action.option_strings, path


def test_help_prints_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 500)" in out and "(default: out/evaluation)" in out
    assert "(default: None)" not in out  # unset options say what they fall back to instead
