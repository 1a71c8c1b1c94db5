"""Reproduce the course's attack table on MNIST (mlp2, mlp4, cnn): clean and adversarial error.

Trains each model once as the course does (10 epochs, plain SGD, lr 0.1, batches of 100; cnn
drops to lr 0.01 after epoch 5) and caches it under ``runs/course/``; then attacks the first
``--n`` test images with FGSM (linf 0.1), PGD linf (eps 0.1, step 0.01, 40 steps), PGD with 10
restarts (cnn) and PGD l2 (eps 2, step 0.1, 40 steps). The course's linf attacks do not clip to
[0, 1] (its l2 attack does): both the unclipped (``lo=-inf, hi=inf``) and the clipped numbers are
reported. Adversarial error = fraction of adversarial points misclassified.

Usage (from the repo root; the data folder defaults to ../shared/data):
    python bench/course_table.py --train-only          # train and cache the three models
    python bench/course_table.py --n 1000 --out bench/course_table.json
    python bench/course_table.py --arch cnn --rows pgd_restarts --out runs/course/cnn.json
                                                          # one row; merged into an earlier --out
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from advrobust import LpBall
from advrobust.attacks import FGSM, PGD, Attack
from advrobust.data import load_dataset
from advrobust.evaluation import evaluate_attack, predict
from advrobust.models import build_model, load_checkpoint
from advrobust.training import course_schedule, fit

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("mlp2", "mlp4", "cnn")
COURSE = {  # the course's error rates: mlp2 / mlp4 / cnn
    "clean": (0.0285, 0.0210, 0.0105),
    "fgsm": (0.9259, 0.8827, 0.4173),
    "pgd": (0.9637, 0.9838, 0.7432),
    "pgd_restarts": (None, None, 0.7648),
    "pgd_l2": (0.9232, 0.9435, 0.7854),
}
UNBOUNDED = (-math.inf, math.inf)
BOX = (0.0, 1.0)
ROWS = ("fgsm", "pgd", "pgd_l2", "pgd_restarts")


def train(arch: str, data_dir: Path, out: Path, seed: int) -> Any:
    """Train ``arch`` with the course's recipe unless ``out`` exists; return the model."""
    if out.exists():
        return load_checkpoint(out).model
    train_set = load_dataset("mnist", "train", data_dir)
    test_set = load_dataset("mnist", "test", data_dir)
    model = build_model(arch, (1, 28, 28), 10, seed=seed)
    partial = out.with_suffix(".partial.pt")  # per-epoch checkpoints; renamed when done
    history = fit(model, train_set, test=test_set, **course_schedule(arch, epochs=10), seed=seed,
                  progress=False, checkpoint_path=partial, arch=arch,
                  arch_kwargs={"input_shape": [1, 28, 28], "num_classes": 10})
    partial.replace(out)
    print(f"{arch}: {history}", flush=True)
    return model.eval()


def attacks(arch: str, rows: tuple[str, ...] = ROWS
            ) -> dict[str, tuple[Attack, str, float, tuple[float, float]]]:
    """Rows of the table (those named in ``rows``): attack, norm, eps and (course) box."""
    table: dict[str, tuple[Attack, str, float, tuple[float, float]]] = {
        "fgsm": (FGSM(), "linf", 0.1, UNBOUNDED),
        "pgd": (PGD(steps=40, step_size=0.01), "linf", 0.1, UNBOUNDED),
        "pgd_l2": (PGD(steps=40, step_size=0.1), "l2", 2.0, BOX),
    }
    if arch == "cnn":
        table["pgd_restarts"] = (PGD(steps=40, step_size=0.01, restarts=10), "linf", 0.1,
                                 UNBOUNDED)
    return {name: row for name, row in table.items() if name in rows}


def adversarial_error(model: Any, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                      threat: LpBall, seed: int) -> tuple[float, float]:
    """(error on the adversarial points, seconds)."""
    run = evaluate_attack(model, attack, (x, y), threat, batch_size=100,
                          generator=torch.Generator().manual_seed(seed))
    return float((predict(model, run.result.x_adv) != y).float().mean()), run.seconds


def last_iterate_pgd(model: Any, x: torch.Tensor, y: torch.Tensor, threat: LpBall,
                     alpha: float, steps: int) -> torch.Tensor:
    """The course's PGD protocol: zero start, ``steps`` steps of mean cross-entropy ascent,
    and the *last* iterate (our PGD starts at random and keeps each sample's best iterate)."""
    xk = x.clone()
    for _ in range(steps):
        xr = xk.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
        xk = threat.project(x, xk + alpha * threat.ascent_direction(grad, xk)).detach()
    return xk


def course_protocol(model: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Errors of the course-protocol PGD (linf and l2 rows), in batches of 100."""
    out = {}
    model.eval()  # our own cached model (cnn has no dropout / batch norm either way)
    for name, (norm, eps, alpha, box) in {"pgd_last": ("linf", 0.1, 0.01, UNBOUNDED),
                                          "pgd_l2_last": ("l2", 2.0, 0.1, BOX)}.items():
        threat = LpBall(norm, eps, *box)
        x_adv = torch.cat([last_iterate_pgd(model, x[i:i + 100], y[i:i + 100], threat, alpha, 40)
                           for i in range(0, x.shape[0], 100)])
        assert bool(threat.contains(x, x_adv).all())
        out[name] = float((predict(model, x_adv) != y).float().mean())
        print(f"{name}: {out[name]:.4f}", flush=True)
    return out


def evaluate(arch: str, model: Any, x: torch.Tensor, y: torch.Tensor, seed: int,
             restarts_n: int, clipped_restarts: bool = True,
             rows: tuple[str, ...] = ROWS) -> dict[str, Any]:
    """The rows named in ``rows`` of the table for one model: course box and clipped box.

    The restarts row (10x the cost of PGD) uses only the first ``restarts_n`` images; on fewer
    images than ``x`` the single-run PGD is repeated on them for comparison.
    """
    out: dict[str, Any] = {"clean": float((predict(model, x) != y).float().mean())}
    for name, (attack, norm, eps, box) in attacks(arch, rows).items():
        xs, ys = (x[:restarts_n], y[:restarts_n]) if name == "pgd_restarts" else (x, y)
        if name == "pgd_restarts" and restarts_n < x.shape[0]:
            out["pgd_on_restarts_images"], _ = adversarial_error(
                model, PGD(steps=40, step_size=0.01), xs, ys, LpBall(norm, eps, *box), seed)
        if name == "pgd_restarts":
            out["pgd_restarts_n"] = int(xs.shape[0])
        err, secs = adversarial_error(model, attack, xs, ys, LpBall(norm, eps, *box), seed)
        print(f"{arch} {name}: {err:.4f} ({secs:.0f} s)", flush=True)
        out[name] = err
        out[name + "_seconds"] = secs
        if box != BOX and not (name == "pgd_restarts" and not clipped_restarts):
            out[name + "_clipped"], secs = adversarial_error(
                model, attack, xs, ys, LpBall(norm, eps, *BOX), seed)
            print(f"{arch} {name} clipped: {out[name + '_clipped']:.4f} ({secs:.0f} s)",
                  flush=True)
    return out


def markdown(results: dict[str, dict[str, Any]], n: int) -> str:
    """The table, ours beside the course's."""
    head = "| row | " + " | ".join(f"{a} ours | {a} course" for a in ARCHS) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(ARCHS))]
    for row, course in COURSE.items():
        for suffix in ("", "_clipped", "_last"):
            key = row + suffix
            if not any(key in results[a] for a in ARCHS):
                continue
            cells = []
            for a, c in zip(ARCHS, course, strict=True):
                ours = results[a].get(key)
                cells += ["-" if ours is None else f"{ours:.4f}",
                          "-" if c is None or suffix else f"{c:.4f}"]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(first {n} MNIST test images)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "course")
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--restarts-n", type=int, default=None,
                   help="images for the 10-restart row (default: --n)")
    p.add_argument("--no-clipped-restarts", action="store_true",
                   help="skip the clipped version of the 10-restart row (saves time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a contended machine more threads are slower)")
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS,
                   help="attack rows to run (default: all); split a long run in parts")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--course-protocol", action="store_true",
                   help="also run PGD linf / l2 as the course does (zero start, last iterate): "
                        "rows pgd_last, pgd_l2_last")
    p.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=PATH",
                   help="use this checkpoint for ARCH instead of training / runs/course/ARCH.pt")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = {a: args.runs / f"{a}.pt" for a in args.arch}
    for item in args.checkpoint:
        arch, _, path = item.partition("=")
        paths[arch] = Path(path)
    models = {a: train(a, args.data_dir, paths[a], args.seed) for a in args.arch}
    if args.train_only:
        return
    test = load_dataset("mnist", "test", args.data_dir).take(args.n)
    begin = time.time()
    restarts_n = args.n if args.restarts_n is None else args.restarts_n
    results: dict[str, dict[str, Any]] = {
        a: evaluate(a, models[a], test.x, test.y, args.seed, restarts_n,
                    not args.no_clipped_restarts, tuple(args.rows)) for a in args.arch}
    if args.course_protocol:
        for a in args.arch:
            results[a].update(course_protocol(models[a], test.x, test.y))
    if args.out is not None and args.out.exists():  # merge with the rows of earlier parts
        earlier = json.loads(args.out.read_text())
        results = {a: {**earlier.get(a, {}), **results.get(a, {})}
                   for a in set(earlier) | set(results)}
    for a in ARCHS:
        results.setdefault(a, {})
    print(markdown(results, args.n))
    print(f"\n{time.time() - begin:.0f} s of attacks on {platform.processor() or 'cpu'}, "
          f"torch threads {args.threads}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
