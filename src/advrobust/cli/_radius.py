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


def run_radius(args: argparse.Namespace, x: Any, y: Any, title: str) -> int:
    """Print radius statistics (and, with --eps, the certified accuracy at that radius)."""
    import torch

    from advrobust.cli._common import emit

    model = args.model_obj
    if args.radius == "exact":
        from advrobust.exact import MinimalDistortion

        res = MinimalDistortion(norm=args.norm, time_limit=args.time_limit,
                                threads=args.threads)(model, x, y)
        radius, upper = res.lower, res.distance
        seconds = 0.0
    else:
        from advrobust.relax import certified_radius

        out = certified_radius(_bounder(args.radius), model, x, y, args.norm)
        radius, upper, seconds = out.radius, out.upper, out.stats["seconds"]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    radius = torch.where(correct, radius.double(), torch.zeros_like(radius.double()))
    payload: dict[str, Any] = {
        "method": args.radius, "norm": args.norm, "n": int(x.shape[0]),
        "clean_accuracy": float(correct.double().mean()),
        "mean_radius": float(radius.mean()), "median_radius": float(radius.median()),
        "radii": [float(r) for r in radius], "upper": [float(u) for u in upper.double()],
    }
    if seconds:
        payload["seconds"] = seconds
    if args.eps is not None:
        payload["eps"] = args.eps
        payload["certified_accuracy"] = float((radius >= args.eps).double().mean())
    keys = [k for k in ("method", "norm", "n", "clean_accuracy", "mean_radius",
                        "median_radius", "eps", "certified_accuracy", "seconds")
            if k in payload]
    rows = [(k.replace("_", " "), payload[k]) for k in keys]
    emit(args, payload, rows, title=title)
    return 0
