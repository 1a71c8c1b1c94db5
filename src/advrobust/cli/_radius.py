"""``advrobust verify --radius METHOD``: the certified radius of every sample under one method."""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

#: ``--radius`` names -> how the radius is found.
RADIUS_METHODS = ("global-lipschitz", "local-lipschitz", "ibp", "crown", "exact")


def _bounder(name: str) -> Any:
    from advrobust.relax import CROWN, IBP, GlobalLipschitz, LocalLipschitz

    return {"global-lipschitz": GlobalLipschitz, "local-lipschitz": LocalLipschitz,
            "ibp": IBP, "crown": CROWN}[name]()


#: The share of ``--time-limit`` that ``--radius exact`` gives its cheap bracket (CROWN by
#: bisection from below, DeepFool from above) before the exact search.
CHEAP_SHARE = 0.15


def _cheap(args: argparse.Namespace, model: Any, x: Any, y: Any, budget: float
           ) -> tuple[Any, list[str], Any, list[float]]:
    """The bracket the cheap methods give every sample, within about ``budget`` seconds.

    Below: the larger of the global Lipschitz closed form and CROWN's bisection (radii
    certified in ``--norm``). Above: the closer of DeepFool's and FAB-T's points (l2 unless
    the norm is linf), each pulled back along its ray to the closest point still adversarial
    and model-checked. Returns (lower,
    lower_by, points, their distances: inf where the point is no adversarial example)."""
    import torch

    from advrobust.attacks import DeepFool, FABTargeted
    from advrobust.core.threat import LpBall, Norm
    from advrobust.exact.minimal import checked_incumbents
    from advrobust.relax import CROWN, GlobalLipschitz, certified_radius
    from advrobust.relax.base import default_spec

    closed = certified_radius(GlobalLipschitz(), model, x, y, args.norm).radius.double()
    crown = certified_radius(CROWN(), model, x, y, args.norm, rtol=1e-2,
                             time_limit=budget).radius.double()
    lower = torch.maximum(closed, crown)
    lower_by = ["none" if float(lo) <= 0 else ("crown" if float(c) >= float(lo) else "lipschitz")
                for lo, c in zip(lower, crown, strict=True)]
    norm = "linf" if args.norm == "linf" else "l2"
    ceiling = LpBall(norm, math.sqrt(x[0].numel()) if norm == "l2" else 1.0)
    with torch.no_grad():
        spec = default_spec(y, int(model(x[:1]).shape[1]))
    points, dist = x.clone(), [math.inf] * x.shape[0]
    # DeepFool first; FAB-T where its box clipping leaves it short of the boundary or far off
    for attack in (DeepFool(norm=norm), FABTargeted(steps=30, n_target_classes=3)):
        with warnings.catch_warnings():  # misclassified samples: the caller sets their bracket
            warnings.simplefilter("ignore", UserWarning)
            found = _pull_back(model, x, y, attack(model, x, y, ceiling).x_adv.detach())
        for s, (d, _) in enumerate(checked_incumbents(model, found, x, spec,
                                                      Norm.parse(args.norm), 0.0, 1.0)):
            if d < dist[s]:
                points[s], dist[s] = found[s], d
    return lower, lower_by, points, dist


def _pull_back(model: Any, x: Any, y: Any, points: Any, steps: int = 12) -> Any:
    """The closest point ``x + a (points - x)``, ``a`` in [0, 1] found by bisection, that the
    model still misclassifies (one batched forward per step); unchanged where it is not."""
    import torch

    shape = (-1,) + (1,) * (x.dim() - 1)
    good = torch.ones(x.shape[0], dtype=x.dtype)
    bad = torch.zeros(x.shape[0], dtype=x.dtype)
    with torch.no_grad():
        for _ in range(steps):
            mid = (good + bad) / 2
            fooled = model(x + mid.reshape(shape) * (points - x)).argmax(1) != y
            good = torch.where(fooled, mid, good)
            bad = torch.where(fooled, bad, mid)
    return x + good.reshape(shape) * (points - x)


def _exact(args: argparse.Namespace, model: Any, x: Any, y: Any, correct: Any
           ) -> tuple[Any, Any, list[int], list[str], list[str]]:
    """``--radius exact``: first the cheap bracket of every sample (:data:`CHEAP_SHARE` of
    --time-limit), then the minimal distortion sample by sample, warm-started from that
    bracket, each with an equal share of the time left (a share not used passes on); returns
    (lower, upper, cut, lower_by, upper_by)."""
    import time

    import torch

    from advrobust.core.progress import progress_bar
    from advrobust.exact import MinimalDistortion

    n = int(x.shape[0])
    lower = torch.zeros(n, dtype=torch.float64)
    upper = torch.zeros(n, dtype=torch.float64)  # misclassified: the clean point is adversarial
    lower_by, upper_by = ["none"] * n, ["clean"] * n
    cut: list[int] = []
    deadline = time.perf_counter() + args.time_limit
    idx = correct.nonzero().flatten()
    if idx.numel():
        cheap_lower, cheap_by, points, dist = _cheap(args, model, x[idx], y[idx],
                                                     CHEAP_SHARE * args.time_limit)
        for k, s in enumerate(idx.tolist()):
            lower[s], lower_by[s] = cheap_lower[k], cheap_by[k]
            upper[s], upper_by[s] = dist[k], "attack" if math.isfinite(dist[k]) else "none"
    with progress_bar(total=n, desc="radius (exact)", unit="sample",
                      disable=args.no_progress) as bar:
        for k, s in enumerate(idx.tolist()):
            share = (deadline - time.perf_counter()) / (idx.numel() - k)
            if share > 0:
                res = MinimalDistortion(norm=args.norm, time_limit=share,
                                        threads=args.threads)(
                    model, x[s:s + 1], y[s:s + 1], known_lower=lower[s:s + 1],
                    incumbent=points[k:k + 1])
                lower[s], upper[s] = float(res.lower[0]), float(res.distance[0])
                lower_by[s] = {"known": lower_by[s]}.get(res.stats["lower_by"][0],
                                                         res.stats["lower_by"][0])
                upper_by[s] = {"incumbent": "attack"}.get(res.stats["upper_by"][0],
                                                          res.stats["upper_by"][0])
                if res.status[0] == "time_limit":
                    cut.append(s)
            else:  # the budget is spent: the sample keeps its cheap bracket
                cut.append(s)
            if cut:
                bar.set_postfix_str(f"{len(cut)} cut by the time limit", refresh=False)
            bar.update(1)
        bar.update(n - idx.numel())
    return lower, upper, cut, lower_by, upper_by


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
        radius, upper, cut, lower_by, upper_by = _exact(args, model, x, y, correct)
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
    if args.radius == "exact":  # which part proved each end of every sample's bracket
        payload["lower_by"], payload["upper_by"] = lower_by, upper_by
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
