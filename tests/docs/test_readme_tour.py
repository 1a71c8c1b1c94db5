"""The README's digits tour runs as written from an empty folder (with small --n / --epochs):
every command finds the files the earlier ones made."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from advrobust.cli import main

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")

#: Budgets that keep the tour to seconds; they change how long a command runs, not which files
#: it reads or writes.
SMALL = {"--n": "6", "--epochs": "1"}
EXTRA = {
    "evaluate": ["--pgd-steps", "3", "--ensemble-steps", "3", "--ensemble-queries", "10"],
    "attack": ["--steps", "3"],
    "verify": ["--time-limit", "5"],
    "detect": ["--fit-n", "20", "--cw-steps", "3", "--cw-search", "1"],
    "dictionary": ["--iterations", "2", "--heldout-n", "6", "--coding-steps", "2"],
    "train": ["--n", "300", "--test-n", "20"],
}


def tour() -> list[list[str]]:
    """The command lines of the README's digits tour block."""
    block = re.search(r"### A tour on digits.*?```bash\n(.*?)```", README, flags=re.S)
    assert block, "the README lost its digits tour"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("advrobust ")]
    assert len(commands) >= 8
    return commands


def _small(argv: list[str]) -> list[str]:
    out = [SMALL.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
    extra = EXTRA.get(argv[0], [])
    if argv[:2] == ["dictionary", "plot"] or (argv[0] == "attack" and "dictionary" in argv):
        extra = []
    if argv[0] == "train" and "pgd" in argv:
        extra = [*extra, "--attack-steps", "2"]
    if argv[0] == "attack" and "cw" in argv:
        extra = ["--param", "steps=3", "--param", "binary_search_steps=1"]
    return out + extra + (["--no-progress"] if argv[0] != "info" and argv[:2] != [
        "dictionary", "plot"] and argv[0] != "train" else [])


def test_readme_tour_runs_in_an_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in tour():
        code = main(_small(argv))
        err = capsys.readouterr().err
        assert code == 0, f"advrobust {shlex.join(argv)} -> {code}: {err}"
    for made in ("mlp2.pt", "small.pt", "pgd.pt", "pgd.jsonl", "pgd.npz", "verify.csv",
                 "cw.png", "dict.npz", "atoms.png"):
        assert (tmp_path / made).is_file(), made
