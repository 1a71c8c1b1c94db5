"""A/B of BaB settings on VNN-COMP instances: per instance and setting, the worst open row's
final lower bound, domains bounded, domains per second, CPU seconds, and the decision.

The settings run interleaved (instance by instance, A then B) so both see the same load. Each
run is ``BaB(time_limit=T, **setting)`` on the property's problem (the cascade's own IR and
spec), without the cascade's CROWN / attack stages. Run by hand, one torch thread::

    OMP_NUM_THREADS=1 nice -n 10 python bench/bab_ab.py --root ../shared/data/vnncomp/mnist_fc \\
        --time 30 --set A '{}' --set B '{"domain_bounds": true}' \\
        --instances 256x4:prop_0_0.05 256x6:prop_1_0.03
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import torch

from advrobust.core.spec import Spec
from advrobust.exact import _search as search_module
from advrobust.exact.bab import BaB
from advrobust.network.ir import Network
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import load_vnnlib
from advrobust.verify.problem import Problem


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/vnncomp/mnist_fc"))
    parser.add_argument("--time", type=float, default=30.0)
    parser.add_argument("--set", nargs=2, action="append", metavar=("NAME", "JSON"),
                        required=True, help="a named setting: BaB keyword arguments as JSON")
    parser.add_argument("--instances", nargs="+", required=True,
                        help="NET:PROP, e.g. 256x4:prop_0_0.05 (vnnlib/ of the 2022 edition) or "
                             "256x2:vnnlib_2021/prop_1_0.03")
    parser.add_argument("--trace", action="store_true",
                        help="print (domains, worst open bound) after every batch")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="deadlines in process CPU seconds (time.perf_counter is replaced "
                        "by time.process_time): A/B under a shared machine's varying load")
    parser.add_argument("--lr", nargs=2, type=float, default=None, metavar=("ALPHA", "BETA"),
                        help="Adam rates of the domains' slopes and multipliers")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="float32: the whole search on a float32 copy of the network, "
                             "with float32's rounding allowances (the cost comparison of "
                             "issue 10: the default keeps every bound in float64)")
    parser.add_argument("--bounder", default=None, metavar="JSON",
                        help="further BetaBounder keyword arguments, e.g. '{\"lr_decay\": 0.98}'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    extra = json.loads(args.bounder) if args.bounder else {}
    if args.lr is not None:
        extra.update(lr_alpha=args.lr[0], lr_beta=args.lr[1])
    if extra:
        base = search_module.BetaBounder

        class Rates(base):  # type: ignore[misc,valid-type]
            def __init__(self, *a, **k):  # type: ignore[no-untyped-def]
                super().__init__(*a, **k, **extra)

        search_module.BetaBounder = Rates  # type: ignore[misc]
    if args.cpu_clock:
        time.perf_counter = time.process_time  # type: ignore[assignment]
    if args.trace:
        step = search_module.RowSearch._step

        def traced(self, open_, deadline, drain=False):  # type: ignore[no-untyped-def]
            step(self, open_, deadline, drain)
            total = sum(r.domains for r in self.rows)
            worst = float(open_.view.lower.min()) if len(open_) else float("inf")
            print(f"    domains {total} open {len(open_)} worst {worst:+.4f}", flush=True)

        search_module.RowSearch._step = traced  # type: ignore[method-assign]
    for item in args.instances:
        net_name, prop_name = item.split(":")
        net = import_onnx(args.root / "onnx" / f"mnist-net_{net_name}.onnx")
        folder = "" if "/" in prop_name else "vnnlib/"  # e.g. vnnlib_2021/prop_1_0.03
        prop = load_vnnlib(args.root / f"{folder}{prop_name}.vnnlib")
        for name, setting in args.set:
            problem = Problem.from_property(net.model, prop, net.input_shape, who="bench")
            network = problem.network
            assert isinstance(network, Network)
            bab = BaB(time_limit=args.time, **json.loads(setting))
            t0, c0 = time.monotonic(), _cpu()
            dtype = getattr(torch, args.dtype)
            if dtype != torch.float64:
                network = copy.deepcopy(network)
                assert network.module is not None
                network.module.to(dtype)
                network._graph = None
            spec = Spec(problem.spec.C.to(dtype), problem.spec.d.to(dtype))
            out = bab._bound(network, problem.x.to(dtype), problem.threat, spec)
            wall, cpu = time.monotonic() - t0, _cpu() - c0
            logs = out.stats["samples"][0]
            domains = sum(r["domains"] for r in logs)
            lower = out.lower[0]
            worst = float(lower.min())
            statuses = sorted({r["status"] for r in logs})
            decided = "unsat" if worst > 0 else (
                "sat" if any(r["status"] == "falsified" for r in logs) else "open")
            rows = " ".join(f"{r['lower']:+.3f}" for r in logs if r["lower"] <= 0)
            print(f"{net_name} {prop_name} {name}: {decided} worst {worst:+.4f} "
                  f"domains {domains} ({domains / max(wall, 1e-9):.0f}/s) wall {wall:.1f} s "
                  f"cpu {cpu:.1f} s  open rows [{rows}] {statuses}", flush=True)


if __name__ == "__main__":
    main()
