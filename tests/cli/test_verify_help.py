"""``advrobust verify --help`` and ``train --help`` start without torch; their lists of methods
and architectures are the library's."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_methods_match_the_library() -> None:
    from advrobust.cli.verify import METHODS as CLI_METHODS
    from advrobust.verify import METHODS

    assert CLI_METHODS == METHODS


def test_architectures_and_defenses_match_the_library() -> None:
    from advrobust.cli.train import DEFENSES as CLI_DEFENSES
    from advrobust.cli.train import MODELS as CLI_MODELS
    from advrobust.models import MODELS
    from advrobust.training.defenses import DEFENSES

    assert CLI_MODELS == tuple(MODELS) and CLI_DEFENSES == tuple(DEFENSES)


@pytest.mark.parametrize("command, flag", [("verify", "--memory-limit"), ("train", "--shift")])
def test_help_does_not_import_torch(command: str, flag: str) -> None:
    code = ("import sys\nfrom advrobust.cli import main\n"
            f"try:\n    main(['{command}', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert flag in out and out.strip().splitlines()[-1] == "False"
