"""The examples in every command's --help are well formed and parse with today's flags."""

from __future__ import annotations

import importlib
import shlex

import pytest

from advrobust.cli import COMMANDS, build_parser


def _example(command: str) -> str:
    module = importlib.import_module(f"advrobust.cli.{command}")
    return str(getattr(module, "EXAMPLE", None) or module._EXAMPLE)


def _commands(text: str) -> list[str]:
    """The example command lines, continuation lines joined and comments dropped."""
    joined = text.replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line.startswith("advrobust ")]


@pytest.mark.parametrize("command", COMMANDS)
def test_example_lines_are_separate_and_short(command: str) -> None:
    for line in _example(command).splitlines():
        assert len(line) <= 100, line
        assert line.count("advrobust ") <= 1, line  # a lost line break glues two commands


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_parse(command: str) -> None:
    commands = _commands(_example(command))
    assert commands, f"'advrobust {command} --help' shows no example"
    for line in commands:
        argv = shlex.split(line)[1:]
        build_parser(argv[0]).parse_args(argv)
