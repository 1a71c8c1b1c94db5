"""Branch and bound's property search on two processes: the open domains dealt once (each
process keeps its share to the end, as rows were dealt before session 24) against dealt again
whenever one process has closed all of its (the default, :func:`advrobust.exact._search.
search_dealt`).

Per instance, one root is made once: alpha-CROWN, then ``--refine`` seconds of the refinement
of a short limit's only round (``refine_bounds(only=True)``, as BaB at 30 s). From that same
root the property's rows are searched for ``--search`` seconds by ``BaB(workers=2)``, the two
ways alternated ``--repeat`` times: per run, the rows decided, the worst row's bound, the
domains bounded by both processes together, and the seconds to the answer. Run by hand on an
otherwise idle 2-core machine::

    PYTHONPATH=src python bench/bab_dealt.py --root ../shared/data/vnncomp/mnist_fc \\
        --instances 256x4:prop_12_0.05 256x4:prop_9_0.05 --refine 20 --search 30
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from advrobust.exact import _search as search_module
from advrobust.exact.bab import BaB
from advrobust.exact.refine import refine_bounds
from advrobust.network.ir import Network
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import load_vnnlib
from advrobust.relax.alpha_crown import alpha_crown
from advrobust.verify.problem import Problem

_SETTINGS = {"dealt once": math.inf, "dealt again": search_module._HANDOFF_SECONDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--instances", nargs="+", required=True,
                        help="NET:PROP, e.g. 256x4:prop_12_0.05")
    parser.add_argument("--refine", type=float, default=20.0)
    parser.add_argument("--search", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for item in args.instances:
        net_name, prop_name = item.split(":")
        net = import_onnx(args.root / "onnx" / f"mnist-net_{net_name}.onnx")
        prop = load_vnnlib(args.root / "vnnlib" / f"{prop_name}.vnnlib")
        problem = Problem.from_property(net.model, prop, net.input_shape, who="bench")
        network = problem.network
        assert isinstance(network, Network)
        x0, threat = problem.x.to(torch.float64), problem.threat
        c, d = problem.spec.C.to(torch.float64), problem.spec.d.to(torch.float64)
        bab = BaB(time_limit=args.refine + args.search, workers=2)
        start = time.perf_counter()
        root = alpha_crown(network, x0, threat, c, d, steps=bab.alpha_steps)
        done = refine_bounds(network, x0, threat, c, d, root, bab,
                             deadline=time.perf_counter() + args.refine, only=True)
        worst = float(done.alpha.lower.min())
        print(f"{item}: root {float(root.lower.min()):+.3f}, refined {worst:+.3f} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        for rep in range(args.repeat):
            for name, seconds in _SETTINGS.items():
                search_module._HANDOFF_SECONDS = seconds
                began = time.perf_counter()
                found, rows, _ = bab._run_rows(network, x0, threat, c[0], d[0], done.alpha,
                                               began + args.search)
                wall = time.perf_counter() - began
                proved = sum(1 for r in rows if r.status == "verified")
                domains = sum(r.domains for r in rows)
                print(f"  {rep} {name:11s}: {proved} / {len(rows)} rows proved, worst "
                      f"{float(found.min()):+.4f}, {domains} domains, {wall:.1f} s", flush=True)
        search_module._HANDOFF_SECONDS = _SETTINGS["dealt again"]


if __name__ == "__main__":
    main()
