"""``advrobust attack``: run any registered attack on a checkpoint over a dataset, report metrics.

Attack classes are found by their ``cli_name`` among the subclasses of
:class:`~advrobust.attacks.Attack`; each is built from its constructor signature: the common
flags (``--steps``, ``--step-size``, ``--restarts``) go to the parameters of the same name when the
attack has them, ``--param NAME=VALUE`` sets any other one, converted to the parameter's type.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import typing
from pathlib import Path
from typing import Any

import torch

from advrobust.cli._common import (
    add_data_args,
    add_json_arg,
    add_model_arg,
    emit,
    load_data,
    load_model,
)
from advrobust.errors import InvalidParameterError

__all__ = ["attack_classes", "build_attack", "register", "run"]

EXAMPLE = """examples:
  advrobust attack --model runs/cnn.pt --data mnist --attack pgd --norm linf --eps 0.1 --n 1000
  advrobust attack --model runs/cnn.pt --attack pgd --norm l2 --eps 2 --step-size 0.1 --json
  advrobust attack --model runs/cnn.pt --attack fgsm --eps 0.1 --unbounded --plot fgsm.png
  advrobust attack --model runs/cnn.pt --attack pgd --eps 0.1 --param loss=margin --target 3
"""

#: Common flags and the constructor parameter each one sets.
COMMON_FLAGS = {"steps": "steps", "step_size": "step_size", "restarts": "restarts"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def register(sub: Any) -> None:
    """Add the ``attack`` command."""
    p = sub.add_parser(
        "attack", help="attack a trained model and report robust accuracy",
        description="Attack the first --n images of a dataset with any registered attack (fgsm, "
                    "pgd, ...) inside an lp ball intersected with the input box; report clean and "
                    "robust accuracy, fooling rate, rMSE and perturbation norms.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p, default="mnist")
    p.add_argument("--attack", default="pgd", help="attack name, e.g. fgsm or pgd (default: pgd)")
    p.add_argument("--norm", default="linf", help="threat norm: linf, l2 or l1 (default: linf)")
    p.add_argument("--eps", type=float, required=True, help="radius of the threat ball")
    p.add_argument("--steps", type=int, default=None, help="iterations (attacks that take it)")
    p.add_argument("--step-size", type=float, default=None, help="step length in the norm")
    p.add_argument("--restarts", type=int, default=None, help="random restarts")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="any other constructor parameter of the attack (repeatable)")
    p.add_argument("--target", type=int, default=None, metavar="CLASS",
                   help="targeted attack towards CLASS (samples of that class are skipped)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts (default: 0)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per attack call")
    p.add_argument("--lo", type=float, default=None, help="lower end of the input box (0)")
    p.add_argument("--hi", type=float, default=None, help="upper end of the input box (1)")
    p.add_argument("--unbounded", action="store_true", help="no input box (lo=-inf, hi=inf)")
    p.add_argument("--save-examples", type=Path, default=None, metavar="FILE.npz",
                   help="write x, x_adv, y and clean / adversarial predictions to FILE.npz")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="draw originals, adversarials and perturbations to FILE.png")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    add_json_arg(p)
    p.set_defaults(func=run)


def attack_classes() -> dict[str, type]:
    """Every concrete attack class with a ``cli_name``, by name."""
    import advrobust.attacks  # noqa: F401  (importing registers every attack module)
    from advrobust.attacks.base import Attack

    found: dict[str, type] = {}
    stack: list[type] = list(Attack.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        name = getattr(cls, "cli_name", None)
        if name and not inspect.isabstract(cls):
            found[name] = cls
    return dict(sorted(found.items()))


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    return {n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _target_type(cls: type, param: inspect.Parameter) -> Any:
    """The type a ``--param`` value converts to: the default's, else the annotation's."""
    if param.default is not inspect.Parameter.empty and param.default is not None:
        return type(param.default)
    try:
        hint = typing.get_type_hints(cls.__init__).get(param.name)  # type: ignore[misc]
    except Exception:  # unresolvable annotations: keep the raw string
        return str
    options = typing.get_args(hint) or (hint,)
    for t in (bool, int, float, str):
        if t in options:
            return t
    return str


def convert_value(cls: type, param: inspect.Parameter, raw: str) -> Any:
    """Convert the text of ``--param NAME=VALUE`` to the parameter's type."""
    if raw.strip().lower() in ("none", "null") and param.default is None:
        return None
    kind = _target_type(cls, param)
    try:
        if kind is bool:
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        if kind in (int, float, str):
            return kind(raw)
        return json.loads(raw)
    except ValueError:
        raise InvalidParameterError(
            f"--param {param.name}={raw}: the '{param.name}' parameter of {cls.__name__} takes "
            f"{getattr(kind, '__name__', kind)} values. Got {raw!r} instead.") from None


def build_attack(name: str, args: argparse.Namespace) -> Any:
    """The attack called ``name``, configured from the common flags and ``--param`` values."""
    classes = attack_classes()
    if name not in classes:
        raise InvalidParameterError(
            f"--attack must be one of {{{', '.join(classes)}}}. Got {name!r} instead.")
    cls = classes[name]
    params = _parameters(cls)
    kwargs: dict[str, Any] = {}
    for flag, pname in COMMON_FLAGS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if pname not in params:
            raise InvalidParameterError(
                f"--{flag.replace('_', '-')} does not apply to {name}: {cls.__name__} takes "
                f"{{{', '.join(params) or 'no parameters'}}}.")
        kwargs[pname] = value
    for item in getattr(args, "param", None) or []:
        pname, sep, raw = item.partition("=")
        if not sep or not pname:
            raise InvalidParameterError(f"--param must be NAME=VALUE. Got {item!r} instead.")
        if pname not in params:
            raise InvalidParameterError(
                f"--param {pname}: {cls.__name__} has no parameter {pname!r}; it takes "
                f"{{{', '.join(params) or 'no parameters'}}}.")
        kwargs[pname] = convert_value(cls, params[pname], raw)
    return cls(**kwargs)


def _threat(args: argparse.Namespace) -> Any:
    from advrobust.core.threat import LpBall

    if args.unbounded and (args.lo is not None or args.hi is not None):
        raise InvalidParameterError("--unbounded cannot be combined with --lo / --hi.")
    if args.unbounded:
        return LpBall(args.norm, args.eps, -math.inf, math.inf)
    lo = 0.0 if args.lo is None else args.lo
    hi = 1.0 if args.hi is None else args.hi
    return LpBall(args.norm, args.eps, lo, hi)


def _select(x: torch.Tensor, y: torch.Tensor, target: int | None, num_classes: int
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Drop the samples whose label is the target; return x, y and how many were dropped."""
    if target is None:
        return x, y, 0
    if not 0 <= target < num_classes:
        raise InvalidParameterError(
            f"--target must be a class in [0, {num_classes - 1}]. Got {target} instead.")
    keep = y != target
    if not bool(keep.any()):
        raise InvalidParameterError(f"every selected sample has label {target} (--target).")
    return x[keep], y[keep], int((~keep).sum())


def run(args: argparse.Namespace) -> int:
    """Run the ``attack`` command; returns the exit status."""
    from advrobust.evaluation import evaluate_attack, predict, summarize_attack

    attack = build_attack(args.attack, args)
    threat = _threat(args)
    if args.batch_size < 1:
        raise InvalidParameterError(f"--batch-size must be >= 1. Got {args.batch_size}.")
    checkpoint = load_model(args.model)
    model = checkpoint.model
    data = load_data(args)
    with torch.no_grad():
        num_classes = int(model(data.x[:1]).shape[1])
    x, y, skipped = _select(data.x, data.y, args.target, num_classes)
    result = evaluate_attack(model, attack, (x, y), threat, batch_size=args.batch_size,
                             target=args.target, generator=torch.Generator().manual_seed(args.seed),
                             progress=args.progress)
    summary = summarize_attack(model, x, y, result.result)
    payload = {**summary, "seconds": result.seconds, "attack": args.attack,
               "attack_params": attack.get_params(), "threat": str(threat),
               "norm": threat.norm.value, "eps": threat.eps, "lo": threat.lo, "hi": threat.hi,
               "model": str(args.model), "arch": checkpoint.arch, "data": args.data,
               "split": args.split, "target": args.target, "skipped": skipped, "seed": args.seed}
    if args.save_examples is not None or args.plot is not None:
        clean_pred, adv_pred = predict(model, x), predict(model, result.result.x_adv)
        if args.save_examples is not None:
            _save_examples(args.save_examples, x, result.result.x_adv, y, clean_pred, adv_pred)
            payload["examples"] = str(args.save_examples)
        if args.plot is not None:
            plot_examples(args.plot, x, result.result.x_adv, y, clean_pred, adv_pred)
            payload["plot"] = str(args.plot)
    emit(args, payload, rows=_rows(payload), title=f"{args.attack} on {args.model} ({threat})")
    return 0


def _rows(p: dict[str, Any]) -> list[tuple[str, Any]]:
    keys = ["n", "clean_accuracy", "robust_accuracy", "attack_success_rate", "fooling_rate",
            "rmse", "mean_norm", "median_norm", "max_norm", "queries", "seconds"]
    rows = [(k, p[k]) for k in keys]
    rows.insert(0, ("attack", f"{p['attack']} {p['attack_params']}"))
    if p["target"] is not None:
        rows.append(("target", f"{p['target']} ({p['skipped']} samples of that class skipped)"))
    rows += [(k, p[k]) for k in ("examples", "plot") if k in p]
    return rows


def _save_examples(path: Path, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                   clean_pred: torch.Tensor, adv_pred: torch.Tensor) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x.numpy(), x_adv=x_adv.numpy(), y=y.numpy(),
                        pred_clean=clean_pred.numpy(), pred_adv=adv_pred.numpy())


def plot_examples(path: Path, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                  clean_pred: torch.Tensor, adv_pred: torch.Tensor, columns: int = 8) -> None:
    """Grid: originals (top), adversarials (middle), perturbations (bottom), with predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(columns, x.shape[0])
    fig, axes = plt.subplots(3, k, figsize=(1.6 * k, 5.2), squeeze=False)
    delta = x_adv - x
    scale = float(delta[:k].abs().max()) or 1.0
    for j in range(k):
        images = (x[j], x_adv[j], delta[j])
        titles = (f"y={int(y[j])} pred={int(clean_pred[j])}", f"pred={int(adv_pred[j])}",
                  f"max|d|={float(delta[j].abs().max()):.2g}")
        for i, (img, title) in enumerate(zip(images, titles, strict=True)):
            arr = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
            kw = ({"cmap": "seismic", "vmin": -scale, "vmax": scale} if i == 2
                  else {"cmap": "gray", "vmin": 0, "vmax": 1})
            axes[i, j].imshow(arr.clip(0, 1) if (i < 2 and img.shape[0] == 3) else arr, **kw)
            axes[i, j].set_title(title, fontsize=7)
            axes[i, j].axis("off")
    for i, label in enumerate(("original", "adversarial", "perturbation")):
        axes[i, 0].text(-0.15, 0.5, label, rotation=90, va="center", ha="right", fontsize=8,
                        transform=axes[i, 0].transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
