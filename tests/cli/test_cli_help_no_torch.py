"""``advrobust attack|detect|dictionary|demo --help`` (and the top level, ``info --help``) start
without torch; the attack table and the choice lists those commands spell out are the library's.

(``verify`` and ``train``: tests/cli/test_verify_help.py.)
"""

from __future__ import annotations

import argparse
import os
import pprint
import subprocess
import sys

import pytest


def test_attack_table_matches_the_library() -> None:
    from advrobust.attacks import attack_classes
    from advrobust.cli._attack_build import ATTACKS, describe_attacks

    described = describe_attacks()
    assert list(ATTACKS.items()) == list(described.items()), (
        "ATTACKS in src/advrobust/cli/_attack_build.py no longer matches the attack classes; "
        "it should read:\n" + pprint.pformat(described, width=98, sort_dicts=False))
    assert tuple(ATTACKS) == tuple(attack_classes())


def test_dictionary_losses_match_the_library() -> None:
    from advrobust.attacks.dictionary.objective import AdversarialLoss
    from advrobust.cli.dictionary import LOSSES

    assert LOSSES == tuple(loss.value for loss in AdversarialLoss)


def test_detect_builds_every_attack_it_lists() -> None:
    from advrobust.cli.detect import ATTACKS, _build_attacks
    from advrobust.detection import GradientNormDetector

    args = argparse.Namespace(attacks=",".join(ATTACKS), eps=0.1, l2_eps=1.0, cw_steps=1,
                              cw_search=1, cw_lr=0.1, evasion_weight=1.0)
    attacks, threats = _build_attacks(args, GradientNormDetector())
    assert tuple(attacks) == ATTACKS == tuple(threats)


#: Command line, then strings its help must show: an option and the choices it spells out.
CASES = [
    (["attack", "--help"], ["--source-attack", "universal-apply [l1,l2,linf]",
                            "pgd [l1,l2,linf] steps=40"]),
    (["detect", "--help"], ["--evasion-weight", "among pgd, fgsm, cw, evasive-cw"]),
    (["dictionary", "--help"], ["learn a dictionary on", "draw the atoms"]),
    (["dictionary", "learn", "--help"], ["--stochastic", "{ce,margin}"]),
    (["dictionary", "plot", "--help"], ["--max-atoms"]),
    (["demo", "--help"], ["--retrain", "--cache-dir"]),
    (["info", "--help"], ["--json"]),
    (["--help"], ["dictionary", "vnncomp"]),
]


@pytest.mark.parametrize("argv, shown", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_help_does_not_import_torch(argv: list[str], shown: list[str]) -> None:
    code = ("import sys\nfrom advrobust.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'numpy'} & set(sys.modules)))")
    wide = {**os.environ, "COLUMNS": "200"}  # no option help wrapped inside a name
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, env=wide).stdout
    text = " ".join(out.split())
    for fragment in shown:
        assert fragment in text, fragment
    assert out.strip().splitlines()[-1] == "[]"
