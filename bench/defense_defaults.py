"""Clean accuracy of every defense at its default strength on digits (issue 15, item 7).

Trains ``mlp2`` on scikit-learn's digits with ``advrobust train``'s defaults (10 epochs, SGD lr
0.1, batch 100) and ``--eps 0.1`` (``--sigma 0.25`` for noise), and prints the clean test
accuracy of each defense next to standard training's. Run by hand (a few minutes on 2 cores):

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/defense_defaults.py [defense ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = {
    "standard": [], "pgd": ["--eps", "0.1"], "fgsm": ["--eps", "0.1"],
    "trades": ["--eps", "0.1"], "tv": ["--eps", "0.1"], "tv-lip": ["--eps", "0.1"],
    "ibp": ["--eps", "0.1"], "crown-ibp": ["--eps", "0.1"], "noise": ["--sigma", "0.25"],
}


def main(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(FLAGS):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "advrobust", "train", "--model", "mlp2", "--data",
                 "digits", "--defense", name, *FLAGS[name], "--out", str(Path(tmp) / "m.pt"),
                 "--force", "--json"], capture_output=True, text=True, check=True).stdout
            acc = json.loads(out)["clean_accuracy"]
            print(f"{name:10s} {' '.join(FLAGS[name]):14s} clean accuracy {acc:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
