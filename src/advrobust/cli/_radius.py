"""``advrobust verify --radius METHOD``: the certified radius of every sample under one method."""

from __future__ import annotations

import argparse
from typing import Any

#: ``--radius`` names -> how the radius is found.
RADIUS_METHODS = ("global-lipschitz", "local-lipschitz", "ibp", "crown", "exact")


def _bounder(name: str) -> Any:
    from advrobust.relax import CROWN, IBP, GlobalLipschitz, LocalLipschitz

    return {"global-lipschitz": GlobalLipschitz, "local-lipschitz": LocalLipschitz,
            "ibp": IBP, "crown": CROWN}[name]()


def _exact(args: argparse.Namespace, model: Any, x: Any, y: Any, correct: Any
           ) -> tuple[Any, Any, list[int]]:
    """``--radius exact``: the minimal distortion sample by sample, each with an equal share
    of the --time-limit left (a share not used passes on); returns (lower, upper, cut)."""
    import math
    import time

    import torch

    from advrobust.core.progress import progress_bar
    from advrobust.exact import MinimalDistortion

    n = int(x.shape[0])
    lower = torch.zeros(n, dtype=torch.float64)
    upper = torch.zeros(n, dtype=torch.float64)  # misclassified: the clean point is adversarial
    cut: list[int] = []
    deadline = time.perf_counter() + args.time_limit
    with progress_bar(total=n, desc="radius (exact)", unit="sample",
                      disable=args.no_progress) as bar:
        for s in range(n):
            if bool(correct[s]):
                share = (deadline - time.perf_counter()) / (n - s)
                if share > 0:
                    res = MinimalDistortion(norm=args.norm, time_limit=share,
                                            threads=args.threads)(model, x[s:s + 1],
                                                                  y[s:s + 1])
                    lower[s], upper[s] = float(res.lower[0]), float(res.distance[0])
                    if res.status[0] == "time_limit":
                        cut.append(s)
                else:  # the budget is spent: nothing is known beyond the trivial bracket
                    lower[s], upper[s] = 0.0, math.inf
                    cut.append(s)
            if cut:
                bar.set_postfix_str(f"{len(cut)} cut by the time limit", refresh=False)
            bar.update(1)
    return lower, upper, cut


def run_radius(args: argparse.Namespace, x: Any, y: Any, title: str) -> int:
    """Print radius statistics (and, with --eps, the certified accuracy at that radius).

    ``--time-limit`` bounds the whole call: the samples share it; a sample whose share runs out
    keeps the sound bracket ``[radius, upper]`` it reached and is listed under
    ``cut_by_time_limit``."""
    import time

    import torch

    from advrobust.cli._common import emit

    model = args.model_obj
    start = time.perf_counter()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    if args.radius == "exact":
        radius, upper, cut = _exact(args, model, x, y, correct)
    else:
        from advrobust.relax import certified_radius

        out = certified_radius(_bounder(args.radius), model, x, y, args.norm,
                               time_limit=args.time_limit, progress=not args.no_progress)
        radius, upper, cut = out.radius, out.upper, out.stats["cut"]
    seconds = time.perf_counter() - start
    radius = torch.where(correct, radius.double(), torch.zeros_like(radius.double()))
    payload: dict[str, Any] = {
        "method": args.radius, "norm": args.norm, "n": int(x.shape[0]),
        "clean_accuracy": float(correct.double().mean()),
        "mean_radius": float(radius.mean()), "median_radius": float(radius.median()),
        "radii": [float(r) for r in radius], "upper": [float(u) for u in upper.double()],
        "time_limit": args.time_limit, "cut_by_time_limit": list(cut), "seconds": seconds,
    }
    if args.eps is not None:
        payload["eps"] = args.eps
        payload["certified_accuracy"] = float((radius >= args.eps).double().mean())
    keys = [k for k in ("method", "norm", "n", "clean_accuracy", "mean_radius",
                        "median_radius", "eps", "certified_accuracy", "seconds")
            if k in payload]
    rows = [(k.replace("_", " "), payload[k]) for k in keys]
    if cut:
        rows.append(("cut by time limit", f"{len(cut)} of {payload['n']} samples (their "
                     f"radius is a sound lower bound; --json lists them with their upper "
                     f"bounds)"))
    emit(args, payload, rows, title=title)
    return 0
