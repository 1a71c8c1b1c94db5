"""``advrobust verify --help`` starts without torch, and its method list is the library's."""

from __future__ import annotations

import subprocess
import sys


def test_methods_match_the_library() -> None:
    from advrobust.cli.verify import METHODS as CLI_METHODS
    from advrobust.verify import METHODS

    assert CLI_METHODS == METHODS


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom advrobust.cli import main\n"
            "try:\n    main(['verify', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "--memory-limit" in out and out.strip().splitlines()[-1] == "False"
