"""The README is the front door: its Python example runs and its set-up commands match CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    demo = "pip install torch==2.13.0 && pip install -e . && advrobust demo"
    tests = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'
    assert demo in README and tests in README
    assert tests in (REPO / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
def test_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _python_blocks()
    assert blocks, "the README lost its Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    upper = float(re.search(r"PGD robust accuracy \(upper bound\): ([0-9.]+)", out).group(1))
    lower = float(re.search(r"CROWN certified accuracy \(lower bound\): ([0-9.]+)", out).group(1))
    assert 0.0 <= lower <= upper <= 1.0  # the two sides of the bracket, in order
    assert "'unknown'" in out and "'verified'" in out
