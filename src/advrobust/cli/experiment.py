"""``advrobust experiment``: the lectures' two theorems, run and measured.

``init-attack``: one gradient step flips the sign of a random two-layer network at
initialisation (Bubeck et al. 2021). ``robust-net``: the provably sqrt(d)-robust network of
Vardi, Yehudai & Shamir 2022, certified by CROWN and attacked, against a network trained by
gradient descent on the same data.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from advrobust.cli._common import add_json_arg, check_plot_path, emit, seed_arg
from advrobust.errors import InvalidParameterError

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust experiment init-attack --d 100,200,500,1000 --k 4d --trials 200 --plot init.png
  advrobust experiment init-attack --d 50,100 --k 1d,4d,16d --activations relu,gelu --step 1
  advrobust experiment robust-net --d 25,50,100 --m 1d --orthogonal --c 0 --plot robust.png
  advrobust experiment robust-net --d 100 --m 10 --c 0.5 --json
"""


def register(sub: Any) -> None:
    """Add the ``experiment`` command and its ``init-attack`` / ``robust-net`` subcommands."""
    p = sub.add_parser(
        "experiment", help="run the lectures' theorems (adversarial examples at init, robust nets)",
        description="Two theorems about two-layer ReLU networks, measured with the library's "
                    "attacks and verifiers; each prints a table and can draw a plot.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="EXPERIMENT")
    actions.required = True
    ia = actions.add_parser(
        "init-attack", help="one gradient step flips random networks (Bubeck et al. 2021)",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ia.add_argument("--d", default="100,200,500,1000", help="input dimensions, comma-separated")
    ia.add_argument("--k", default="4d",
                    help="hidden widths, comma-separated ints or multiples of d (default: 4d)")
    ia.add_argument("--activations", default="relu,softplus",
                    help="comma-separated, among relu, softplus, gelu (default: relu,softplus)")
    ia.add_argument("--trials", type=int, default=200, help="networks per cell (default: 200)")
    ia.add_argument("--step", type=float, default=3.0,
                    help="step norm of the flip rate (default: 3; ||x|| = sqrt(d))")
    ia.add_argument("--seed", type=seed_arg, default=0, help="seed (default: 0)")
    _common(ia)
    rn = actions.add_parser(
        "robust-net", help="provably robust network vs a trained one (Vardi et al. 2022)",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    rn.add_argument("--d", default="25,50,100", help="input dimensions, comma-separated")
    rn.add_argument("--m", default="10",
                    help="points: an int or a multiple of d such as 1d (default: 10)")
    rn.add_argument("--c", type=float, default=0.7,
                    help="near-orthogonality constant in [0, 1) (default: 0.7)")
    rn.add_argument("--orthogonal", action="store_true",
                    help="orthonormal points (c = 0; needs m <= d) instead of uniform ones")
    rn.add_argument("--width", type=int, default=100,
                    help="hidden width of the trained network (default: 100)")
    rn.add_argument("--steps", type=int, default=1000, help="gradient steps (default: 1000)")
    rn.add_argument("--lr", type=float, default=0.5, help="step size (default: 0.5)")
    rn.add_argument("--attacks", default="deepfool,cw,pgd",
                    help="upper-bound attacks, comma-separated (default: deepfool,cw,pgd)")
    rn.add_argument("--seed", type=seed_arg, default=0, help="seed (default: 0)")
    _common(rn)
    p.set_defaults(func=run)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot to this file")
    add_json_arg(parser)
    parser.set_defaults(func=run)


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InvalidParameterError(
            f"--{name} must be comma-separated integers such as 100,200. Got {text!r} instead.")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[head for head, _ in columns]] + [[fmt(r[key]) for _, key in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                     for line in cells)


_INIT_COLUMNS = (("act", "activation"), ("d", "d"), ("k", "k"), ("flip", "flip_rate"),
                 ("flip(lin)", "linear_flip_rate"), ("theory", "predicted_linear_flip_rate"),
                 ("|f|", "f_abs_mean"), ("theory", "predicted_f_abs_mean"),
                 ("||grad||", "grad_norm_mean"), ("theory", "predicted_grad_norm"),
                 ("step(med)", "needed_step_median"), ("lin(med)", "linear_step_median"),
                 ("theory", "predicted_linear_step_median"))
_ROBUST_COLUMNS = (("d", "d"), ("m", "m"), ("c", "c"), ("c(meas)", "measured_c"),
                   ("bound", "bound"), ("exact", "exact"), ("margin", "margin_min"),
                   ("cert(min)", "certified_min"), ("attack(min)", "attack_min"),
                   ("trained cert", "trained_certified_median"),
                   ("trained attack", "trained_attack_median"),
                   ("(max)", "trained_attack_max"))


def _init_attack(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], str]:
    from advrobust.experiments import init_attack

    res = init_attack(d=_ints(args.d, "d"), k=_names(args.k),
                      activations=_names(args.activations), trials=args.trials,
                      step=args.step, seed=args.seed)
    note = (f"flip: share of {args.trials} random networks whose sign one gradient step of "
            f"l2 norm <= {args.step:g} flips (line search); flip(lin): |f|/||grad|| <= step; "
            "theory: Gaussian limit (E f^2 = E psi(g)^2, E||grad||^2 closed form).")
    return res, res.summary(), note


def _robust_net(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], str]:
    from advrobust.experiments import robust_net

    m: int | str = int(args.m) if args.m.strip().isdigit() else args.m
    res = robust_net(d=_ints(args.d, "d"), m=m, c=args.c, orthogonal=args.orthogonal,
                     width=args.width, steps=args.steps, lr=args.lr,
                     attacks=_names(args.attacks), seed=args.seed)
    note = ("radii in l2: bound = (1-c)/4 sqrt(d) (theorem), exact = (1-c)/2 sqrt(d) (the "
            "construction); cert = CROWN bisection (lower), attack = best of the attacks "
            "(upper); trained = two-layer net trained by gradient descent (medians).")
    return res, res.summary(), note


def run(args: argparse.Namespace) -> int:
    """Run one experiment, print its table (or JSON) and draw the plot if asked."""
    from advrobust.experiments import plotting

    check_plot_path(args.plot, "--plot")  # before the experiment runs, not after it
    columns: Sequence[tuple[str, str]]
    if args.action == "init-attack":
        res, rows, note = _init_attack(args)
        columns = _INIT_COLUMNS
        plot = None if args.plot is None else str(plotting.plot_init_attack(res, args.plot))
    else:
        res, rows, note = _robust_net(args)
        columns = _ROBUST_COLUMNS
        plot = None if args.plot is None else str(plotting.plot_robust_net(res, args.plot))
    if args.json:
        emit(args, {"experiment": args.action, "seed": res.seed, "params": res.params,
                    "rows": rows, "plot": plot})
        return 0
    print(_table(rows, columns))
    print(note)
    if plot is not None:
        print(f"plot written to {plot}")
    return 0
