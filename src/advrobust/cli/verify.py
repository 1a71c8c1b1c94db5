"""``advrobust verify``: certify (or break) a model on a dataset, or decide a VNNLIB property."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from advrobust.cli._common import (
    add_data_args,
    add_json_arg,
    add_memory_arg,
    apply_memory_arg,
    check_output,
    emit,
    forecast,
    held_interrupt,
    interrupted,
    load_data,
    load_model,
    seed_arg,
)
from advrobust.cli._save import SUFFIXES, SampleWriter, add_save_args, keep_finished, open_writer
from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust verify --model cnn_mnist.pt --data mnist --eps 0.02 --method crown --n 1000
  advrobust verify --model small_mnist.pt --data mnist --eps 0.05 --method auto --n 100 --json
  advrobust verify --onnx mnist-net_256x2.onnx --data mnist --eps 0.03 --method auto
  advrobust verify --onnx mnist-net_256x2.onnx --vnnlib prop_0_0.03.vnnlib --time-limit 120

methods: ibp, crown, lp (one relaxation: lower bounds), milp or bab (exact, CROWN first;
bab = beta-CROWN branch and bound on ReLU splits), auto (CROWN, then PGD on what is left,
then BaB on what is still undecided with all of --time-limit; the MILP for l1).
With --vnnlib the answer follows VNN-COMP: unsat = verified, sat = counterexample found.
"""


#: ``advrobust.verify.METHODS``, spelled out so that ``verify --help`` does not import torch
#: (tests/cli/test_verify_help.py keeps the two equal).
METHODS = ("auto", "ibp", "crown", "lp", "milp", "bab")


def register(sub: Any) -> None:
    """Add the ``verify`` command."""
    p = sub.add_parser(
        "verify", help="prove robustness (or find counterexamples) with bounds, attacks, MILP",
        description="Certify a classifier sample by sample: verified (a sound lower bound on "
                    "the worst-case margin is positive), falsified (a counterexample inside the "
                    "threat set, re-checked through the model) or unknown. Uses the first 100 "
                    "samples of the split unless --n says otherwise.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, metavar="CKPT",
                     help="checkpoint file written by 'advrobust train'")
    src.add_argument("--onnx", type=Path, metavar="FILE",
                     help="an ONNX network: chains of Gemm/MatMul/Conv/Relu/Flatten for every "
                     "method; other graphs (residual, Sigmoid, Tanh, MaxPool ...) for "
                     "ibp / crown / lp")
    p.add_argument("--vnnlib", type=Path, metavar="PROP",
                   help="decide this VNNLIB property instead of a dataset (prints sat/unsat)")
    add_data_args(p, default="mnist")
    p.set_defaults(n=100)
    p.add_argument("--eps", type=float, default=None, help="radius of the threat set")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"),
                   help="norm of the threat set (default: linf)")
    p.add_argument("--method", default="auto", choices=METHODS,
                   help="verification method (default: auto)")
    p.add_argument("--precision", default="float64", choices=("float64", "float32"),
                   help="dtype of the ibp / crown passes: float32 runs them with float32's own "
                        "rounding allowances, as sound, about twice as fast on larger networks, "
                        "looser (default: float64)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="exact-method / LP seconds per sample; with --vnnlib, wall-clock "
                        "seconds for the whole property, every stage included; with --radius, "
                        "wall-clock seconds for all the samples together, shared among them "
                        "(samples it cuts keep a sound bracket of their radius; with --radius "
                        "exact at least CROWN's from below and an attack's from above, which "
                        "take the first 15%%) (default: 60)")
    p.add_argument("--threads", type=int, default=1,
                   help="cores: solver threads, and BaB's worker processes, which share its "
                        "rows (Linux) (default: 1)")
    add_memory_arg(p)
    p.add_argument("--batch-size", type=int, default=100,
                   help="samples per bound / attack call (default: 100)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the attack's random starts")
    p.add_argument("--counterexample", type=Path, metavar="FILE",
                   help="with --vnnlib: write the VNN-COMP result file here (sat and its "
                        "counterexample, unsat or unknown)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_save_args(p, "index, label, prediction, verdict, lower and upper bound of the worst-case "
                     "margin, method that decided, seconds; witnesses: counterexamples")
    from advrobust.cli._radius import RADIUS_METHODS  # issue 12: certified radii

    p.add_argument("--radius", choices=RADIUS_METHODS, default=None, metavar="METHOD",
                   help="print each sample's certified radius under METHOD instead: "
                        f"{', '.join(RADIUS_METHODS)} (with --eps: certified accuracy there)")
    add_json_arg(p)
    p.set_defaults(func=run)


def _network(args: argparse.Namespace) -> tuple[Any, tuple[int, ...] | None]:
    """The model and the per-sample input shape it takes (ONNX graph / checkpoint record)."""
    if args.onnx is not None:
        from advrobust.network.onnx import import_onnx

        net = import_onnx(args.onnx)
        bad = [name for name, value in net.model.state_dict().items()
               if value.is_floating_point() and not bool(value.isfinite().all())]
        if bad:
            raise InvalidInputError(
                f"The network {str(args.onnx)!r} has NaN or infinite weights ({bad[:5]}): "
                "its bounds and verdicts would be meaningless.")
        return net.model, net.input_shape
    ckpt = load_model(args.model)
    shape = ckpt.arch_kwargs.get("input_shape")
    return ckpt.model, tuple(int(s) for s in shape) if shape is not None else None


def _fit_shape(x: Any, shape: tuple[int, ...] | None) -> Any:
    if shape is None or tuple(x.shape[1:]) == shape:
        return x
    if math.prod(shape) != x[0].numel():
        raise InvalidInputError(f"The network takes inputs of shape {shape} "
                                f"({math.prod(shape)} values) but the data has "
                                f"{tuple(x.shape[1:])}. Pick the data set the network was made "
                                "for.")
    return x.reshape(x.shape[0], *shape)


def _run_dataset(args: argparse.Namespace, model: Any, shape: tuple[int, ...] | None) -> int:
    import torch

    from advrobust.core.progress import progress_bar
    from advrobust.core.threat import LpBall
    from advrobust.evaluation.verify import verify_dataset

    if args.eps is None:
        raise InvalidParameterError("--eps is required (or give --vnnlib). Got none.")
    from advrobust.core._validation import check_int

    check_int(args.batch_size, "--batch-size", "advrobust verify", low=1)
    data = load_data(args)
    x = _fit_shape(data.x, shape)
    writer = open_writer(args.save, COLUMNS, args.force)
    from advrobust.evaluation import predict

    pred, parts = predict(model, x), []
    spans = [(s, min(s + args.batch_size, len(data))) for s in range(0, len(data),
                                                                    args.batch_size)]
    ahead, gen = forecast(args, len(data)), torch.Generator().manual_seed(args.seed)
    threat = LpBall(args.norm, args.eps)
    bar = progress_bar(total=len(spans), desc="verify", unit="batch",
                       disable=args.no_progress or len(spans) < 2)
    try:  # batch by batch: the rows of finished batches are on disk when Ctrl-C comes
        for s, e in spans:
            part = verify_dataset(
                model, x[s:e], data.y[s:e], threat, method=args.method,
                time_limit=args.time_limit, threads=args.threads, batch_size=args.batch_size,
                progress=not args.no_progress and len(spans) == 1, generator=gen,
                precision=args.precision)
            with held_interrupt():  # the batch is kept whole or not at all
                parts.append(part)
                if writer is not None:
                    _write_rows(writer, part, data.y[s:e], pred[s:e], offset=s)
            ahead.update(e)
            bar.update(1)
    except KeyboardInterrupt:
        return _keep_finished(args, writer, parts, len(data))
    finally:
        bar.close()
    report = concat_reports(parts)
    if writer is not None:
        print(f"advrobust verify: saved {writer.close()}", file=sys.stderr)
    _emit_dataset(args, report, f"advrobust verify ({data.name}, {len(data)} samples)")
    return 0


def _emit_dataset(args: argparse.Namespace, report: Any, title: str,
                  note: str | None = None) -> None:
    payload = report.summary()
    keys = ("method", "threat", "n", "verified", "falsified", "unknown", "clean_accuracy",
            "certified_accuracy", "robust_accuracy_upper", "mean_lower_bound", "seconds")
    rows = [(k.replace("_", " "), payload[k]) for k in keys]
    if note is not None:
        rows.insert(0, ("interrupted", note))
        payload["interrupted"] = note
    emit(args, payload, rows, title=title)


def _keep_finished(args: argparse.Namespace, writer: SampleWriter | None, parts: list[Any],
                   total: int) -> int:
    """On Ctrl-C: keep the rows of the finished batches, print their counts; returns 130."""
    done = sum(p.n for p in parts)
    saved = keep_finished(writer)
    if parts:
        _emit_dataset(args, concat_reports(parts), f"advrobust verify ({done} of {total} "
                      "samples)", note=f"the first {done} of {total} samples")
        saved.append("the counts of the finished samples on stdout")
    return interrupted(args, done, total, saved)


def concat_reports(parts: list[Any]) -> Any:
    """One :class:`~advrobust.evaluation.VerifyReport` of consecutive batches' reports."""
    import dataclasses

    import torch

    if len(parts) == 1:
        return parts[0]
    stages: dict[str, float] = {}
    stats: dict[str, Any] = {}
    offset = 0
    for p in parts:
        for k, v in p.stage_seconds.items():
            stages[k] = stages.get(k, 0.0) + v
        for k, v in p.stats.items():  # per-sample logs keyed by index: shift to the whole run
            if isinstance(v, dict) and all(isinstance(i, int) for i in v):
                stats.setdefault(k, {}).update({i + offset: log for i, log in v.items()})
            elif isinstance(v, list):
                stats.setdefault(k, []).extend(v)
            else:
                stats.setdefault(k, v)
        offset += p.n
    first = parts[0]
    return dataclasses.replace(
        first, verdict=sum((p.verdict for p in parts), ()),
        lower=torch.cat([p.lower for p in parts]), upper=torch.cat([p.upper for p in parts]),
        witness=torch.cat([p.witness for p in parts]),
        decided_by=sum((p.decided_by for p in parts), ()),
        clean_values=torch.cat([p.clean_values for p in parts]),
        seconds=sum(p.seconds for p in parts), stage_seconds=stages, stats=stats)


def _run_property(args: argparse.Namespace, model: Any, shape: tuple[int, ...] | None) -> int:
    import torch

    from advrobust.evaluation.verify import verify_property
    from advrobust.evaluation.vnncomp import write_result
    from advrobust.network.vnnlib import load_vnnlib

    if args.eps is not None:
        raise InvalidParameterError(
            "--eps does not apply with --vnnlib: the property's own input box is the set "
            f"checked. Got --eps {args.eps}; drop it (or drop --vnnlib to verify a data set).")
    check_output(args.counterexample, "--counterexample")
    prop = load_vnnlib(args.vnnlib)
    _check_property_sizes(args, model, prop, shape)
    reference = None
    if args.onnx is not None:  # a counterexample must hold under onnxruntime too, if installed
        from advrobust.network.onnx import onnx_runtime

        reference = onnx_runtime(args.onnx)
    result = verify_property(model, prop, input_shape=shape, method=args.method,
                             time_limit=args.time_limit, threads=args.threads,
                             progress=not args.no_progress,
                             generator=torch.Generator().manual_seed(args.seed),
                             reference=reference)
    if args.counterexample is not None:
        write_result(args.counterexample, result.status, result.counterexample, result.outputs)
    report = result.report
    payload = {"result": result.status, "property": str(args.vnnlib), "method": args.method,
               "lower_bound": float(report.margin_lower[0]),
               "upper_bound": float(report.margin_upper[0]),
               "decided_by": report.decided_by[0] or None, "seconds": report.seconds}
    emit(args, payload, list(payload.items()), title="advrobust verify (VNNLIB)")
    return 0


def _check_property_sizes(args: argparse.Namespace, model: Any, prop: Any,
                          shape: tuple[int, ...] | None) -> None:
    """The property's X and Y variables must match the network's inputs and outputs."""
    import torch

    net = str(args.onnx if args.onnx is not None else args.model)
    if shape is not None and math.prod(shape) != prop.num_inputs:
        raise InvalidInputError(
            f"The property {str(args.vnnlib)!r} declares {prop.num_inputs} input variables but "
            f"the network {net!r} takes {math.prod(shape)} values (shape {shape}). Pair each "
            "property with the network it was written for.")
    with torch.no_grad():
        outputs = int(model(torch.zeros(1, *(shape or (prop.num_inputs,)))).shape[-1])
    if outputs != prop.num_outputs:
        raise InvalidInputError(
            f"The property {str(args.vnnlib)!r} declares {prop.num_outputs} output variables "
            f"but the network {net!r} has {outputs} outputs. Pair each property with the "
            "network it was written for.")


def run(args: argparse.Namespace) -> int:
    """Verify a dataset (counts and certified accuracy) or one VNNLIB property."""
    apply_memory_arg(args)
    if args.vnnlib is not None and args.save is not None:
        raise InvalidParameterError("--save applies to a data set run; with --vnnlib use "
                                    "--counterexample FILE. Got both --vnnlib and --save.")
    if args.save is not None:
        check_output(args.save, "--save", force=args.force, suffixes=SUFFIXES)
    if args.vnnlib is None and args.counterexample is not None:
        raise InvalidParameterError("--counterexample applies to --vnnlib only (a dataset run "
                                    "has no single counterexample to write). Got no --vnnlib.")
    if args.precision != "float64" and (args.vnnlib is not None or args.radius is not None
                                        or args.method not in ("ibp", "crown")):
        raise InvalidParameterError(
            f"--precision {args.precision} applies to a data set run with --method ibp or "
            f"crown; got --method {args.method}"
            + (" with --vnnlib" if args.vnnlib is not None else "")
            + (" with --radius" if args.radius is not None else "")
            + ". Drop --precision, or pick one of those methods.")
    model, shape = _network(args)
    if args.radius is not None and args.vnnlib is None:  # issue 12: certified radii
        from advrobust.cli._radius import run_radius

        if args.save is not None:
            raise InvalidParameterError("--save applies to a verification run, not to "
                                        "--radius (use --json). Got both.")
        data = load_data(args)
        args.model_obj = model
        return run_radius(args, _fit_shape(data.x, shape), data.y,
                          f"advrobust verify --radius ({data.name}, {len(data)} samples)")
    if args.vnnlib is not None:
        return _run_property(args, model, shape)
    return _run_dataset(args, model, shape)


COLUMNS = ("index", "label", "prediction", "verdict", "lower", "upper", "decided_by",
           "seconds")


def _write_rows(writer: SampleWriter, report: Any, y: Any, pred: Any, offset: int = 0) -> None:
    """One row per sample: verdict, bracket of the worst-case margin; counterexamples."""
    import torch

    from advrobust.core.result import Verdict

    n = len(y)
    lower, upper = report.margin_lower, report.margin_upper
    writer.write([{
        "index": offset + i, "label": y[i], "prediction": pred[i],
        "verdict": report.verdict[i], "lower": float(lower[i]), "upper": float(upper[i]),
        "decided_by": report.decided_by[i] or None, "seconds": report.seconds / n}
        for i in range(n)])
    falsified = torch.tensor([v is Verdict.FALSIFIED for v in report.verdict])
    writer.add_witnesses(offset + torch.arange(n)[falsified], report.witness[falsified])
