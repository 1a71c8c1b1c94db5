"""Randomized smoothing on MNIST: certified accuracy at l2 radii and seconds per image.

Issue 12 target (sigma 0.5, n = 10,000, alpha = 0.001, a small CNN trained here with Gaussian
noise): certified accuracy >= 0.97 at r = 0.5, >= 0.88 at r = 1.0, >= 0.60 at r = 1.5 over
>= 500 test images, <= 2 s per image on 2 CPU cores (published LeNet, n = 100,000:
0.969 / 0.898 / 0.677). Train the models with the CLI first, e.g.

    advrobust train --model lenet --data mnist --data-dir ../shared/data/mnist \\
        --defense gaussian --sigma 0.5 --optimizer adam --lr 0.001 --epochs 40 --lr-drop 30 \\
        --out runs/lenet_noise05_40.pt

then run (by hand, not by pytest)

    PYTHONPATH=src python bench/smoothing.py --model gaussian=runs/lenet_noise05_40.pt \\
        --model consistency=runs/lenet_cons05_40.pt --images 200 --plot docs/smoothing.png

Every model certifies the same first --images test images with the same noise seed. Wall and
CPU (process) seconds per image are both reported: on a shared machine the wall time mostly
measures the other users. ``--workers 2`` certifies two halves of the images in two processes
(one per core; CPU seconds summed). ``--partial DIR`` saves each worker's finished chunks after
every chunk, so a run cut short (load, time-out) still leaves its certificates.
``--model NAME=a.pt+b.pt+c.pt`` certifies the soft-voting ensemble of the checkpoints
(``advrobust.models.Ensemble``).

``--holdout H`` certifies the last H *training* images instead of the test images, for choosing
among candidate recipes without looking at the test set; every checkpoint must have been
trained on at most the first len(train) - H training images (``advrobust train --n``), which
is checked against the checkpoint's ``n_train``:

    advrobust train --model lenet-wide --data mnist --data-dir ../shared/data/mnist \
        --n 23345 --defense consistency --sigma 0.5 --lam 10 ... --out runs/cand.pt
    PYTHONPATH=src python bench/smoothing.py --model cand=runs/cand.pt --holdout 1000 \
        --images 1000 --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
TARGETS = {0.5: 0.97, 1.0: 0.88, 1.5: 0.60}


def cached_certify(path: Path, x: torch.Tensor, y: torch.Tensor,
                   args: argparse.Namespace) -> dict[str, Any]:
    """``certify_model``, reusing an earlier run with the same checkpoint and settings (kept in
    runs/smoothing-cache/), so models can be benchmarked one at a time and plotted together."""
    from dataclasses import asdict

    from advrobust.smoothing import SmoothingCertificate

    key = (f"{_stem(path)}-{args.images}-{args.sigma}-{args.n0}-{args.n}-{args.alpha}-"
           f"{args.seed}-{args.batch_size}" + (f"-w{args.workers}" if args.workers > 1 else "")
           + (f"-holdout{args.holdout}" if args.holdout else "") + ".pt")
    cache = REPO / "runs" / "smoothing-cache" / key
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        saved["cert"] = SmoothingCertificate(**saved["cert"])
        print(f"  {path.name}: reused {cache}")
        return saved
    res = certify_model(path, x, y, args)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(res | {"cert": asdict(res["cert"])}, cache)
    return res


def _stem(path: Path | str) -> str:
    """File-name stem of a checkpoint, or ``a+b+c`` for an ensemble ``a.pt+b.pt+c.pt``."""
    return "+".join(Path(p).stem for p in str(path).split("+"))


def _model(path: Path | str) -> torch.nn.Module:
    """The checkpoint's model, or the soft-voting ``Ensemble`` of ``a.pt+b.pt+...``."""
    from advrobust.models import Ensemble, load_checkpoint

    models = [load_checkpoint(p).model for p in str(path).split("+")]
    return models[0] if len(models) == 1 else Ensemble(models)


def _certify_slice(job: tuple[str, torch.Tensor, argparse.Namespace, int]) -> dict[str, Any]:
    """One worker: CERTIFY its images with its own noise stream (seed + worker index).

    With ``--partial DIR --resume`` a worker first takes the certificates its cut-short
    predecessor left in DIR and certifies only the rest, continuing the saved noise stream
    (files written before the stream was saved continue with seed + 1000 + worker instead).
    """
    from dataclasses import asdict

    from advrobust.smoothing import Smoothed, SmoothingCertificate

    path, x, args, worker = job
    torch.set_num_threads(args.threads)
    smoothed = Smoothed(_model(path), args.sigma)
    gen = torch.Generator().manual_seed(args.seed + worker)
    parts: list[Any] = []
    first, cpu_before = 0, 0.0
    saved_file = None if args.partial is None else args.partial / f"{_stem(path)}-w{worker}.pt"
    if args.resume and saved_file is not None and saved_file.is_file():
        saved = torch.load(saved_file, weights_only=True)
        if "cert" in saved:
            gen.set_state(saved["generator"])
            cpu_before = float(saved["cpu"])
            saved = saved["cert"]
        else:  # written before the noise stream was saved
            gen = torch.Generator().manual_seed(args.seed + 1000 + worker)
        parts.append(SmoothingCertificate(**saved))
        first = len(parts[0].prediction)
        print(f"  {_stem(path)} [worker {worker}]: resumed after {first} images", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(first, len(x), args.chunk):
        parts.append(smoothed.certify(x[start:start + args.chunk], n0=args.n0, n=args.n,
                                      alpha=args.alpha, batch_size=args.batch_size,
                                      generator=gen))
        done = min(start + args.chunk, len(x))
        if saved_file is not None:  # keep finished chunks if the run is cut short
            saved_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"cert": asdict(SmoothingCertificate.concat(parts)),
                        "generator": gen.get_state(),
                        "cpu": cpu_before + time.process_time() - cpu}, saved_file)
        print(f"  {_stem(path)} [worker {worker}]: {done}/{len(x)} images, "
              f"{(time.perf_counter() - wall) / (done - first):.2f} s/image wall", flush=True)
    return {"parts": parts, "cpu": cpu_before + time.process_time() - cpu}


def certify_model(path: Path, x: torch.Tensor, y: torch.Tensor,
                  args: argparse.Namespace) -> dict[str, Any]:
    """CERTIFY every image (chunks of --chunk images for the progress line) and time it.

    With ``--workers W`` > 1 the images are split into W contiguous slices certified by W
    processes (worker i draws its noise from seed + i); the CPU seconds are summed over them.
    """
    from advrobust.smoothing import SmoothingCertificate

    slices = torch.tensor_split(torch.arange(len(y)), args.workers)
    jobs = [(str(path), x[idx], args, w) for w, idx in enumerate(slices)]
    wall = time.perf_counter()
    if args.workers == 1:
        outs = [_certify_slice(jobs[0])]
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            outs = pool.map(_certify_slice, jobs)
    wall = time.perf_counter() - wall
    cpu = sum(o["cpu"] for o in outs)
    cert = SmoothingCertificate.concat([p for o in outs for p in o["parts"]])
    return {"checkpoint": str(path), "cert": cert,
            "certified_accuracy": dict(zip(RADII, cert.certified_accuracy(y, RADII),
                                           strict=True)),
            "abstained": int(cert.abstained.sum()), "wall_s_per_image": wall / len(y),
            "cpu_s_per_image": cpu / len(y), "workers": args.workers}


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one row per model, with the targets as the last row."""
    head = "| model | " + " | ".join(f"r={r:g}" for r in RADII) + \
        " | abstained | wall s/img | CPU s/img |"
    lines = [head, "|" + "---|" * (len(RADII) + 4)]
    for name, res in results.items():
        acc = " | ".join(f"{res['certified_accuracy'][r]:.3f}" for r in RADII)
        lines.append(f"| {name} | {acc} | {res['abstained']} | "
                     f"{res['wall_s_per_image']:.2f} | {res['cpu_s_per_image']:.2f} |")
    target = " | ".join(f">= {TARGETS[r]:.2f}" if r in TARGETS else "" for r in RADII)
    lines.append(f"| target | {target} | | <= 2 (2 cores) | |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], y: torch.Tensor, out: Path,
         args: argparse.Namespace) -> None:
    """Certified accuracy against the radius, one curve per model (small PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from advrobust.smoothing import max_certifiable_radius

    r_max = max_certifiable_radius(args.sigma, args.n, args.alpha)
    grid = np.linspace(0, r_max * 1.02, 200)
    fig, ax = plt.subplots(figsize=(4.5, 3.0), dpi=100)
    for name, res in results.items():
        ax.plot(grid, res["cert"].certified_accuracy(y, grid.tolist()), label=name,
                drawstyle="steps-post")
    ax.axvline(r_max, color="grey", linestyle=":", label=f"largest certifiable ({r_max:.2f})")
    ax.set(xlabel="l2 radius", ylabel="certified accuracy", ylim=(0, 1.02))
    images = f"{len(y)} held-out training" if args.holdout else f"{len(y)} test"
    ax.set_title(f"MNIST, {images} images, sigma={args.sigma:g}, n={args.n}, "
                 f"alpha={args.alpha:g}", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The first --images test images, or of the last --holdout training images."""
    from advrobust.data import load_dataset

    if args.holdout < 0:
        raise SystemExit(f"--holdout must be >= 0. Got {args.holdout}.")
    if not args.holdout:
        test = load_dataset("mnist", split="test", root=args.data_dir)
        return test.x[:args.images], test.y[:args.images]
    train = load_dataset("mnist", split="train", root=args.data_dir)
    if not 0 < args.holdout < len(train.y):
        raise SystemExit(f"--holdout must be below the {len(train.y)} training images. "
                         f"Got {args.holdout}.")
    if args.images > args.holdout:
        raise SystemExit(f"--images ({args.images}) must be at most --holdout "
                         f"({args.holdout}).")
    start = len(train.y) - args.holdout
    return train.x[start:start + args.images], train.y[start:start + args.images]


def _check_not_trained_on(path: Path, args: argparse.Namespace) -> None:
    """With --holdout, refuse a checkpoint trained on any of the held-out images."""
    if not args.holdout:
        return
    from advrobust.data import load_dataset
    from advrobust.models import load_checkpoint

    kept = len(load_dataset("mnist", split="train", root=args.data_dir).y) - args.holdout
    for member in str(path).split("+"):
        trained_on = load_checkpoint(member).metadata.get("n_train")
        if not isinstance(trained_on, int) or trained_on > kept:
            raise SystemExit(f"--holdout {args.holdout}: {member} was trained on "
                             f"{trained_on!r} training images, not on the first {kept} only.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CKPT",
                        help="a checkpoint, or CKPT+CKPT+... for their soft-voting ensemble")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes certifying contiguous slices of the images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--partial", type=Path, default=None, metavar="DIR",
                        help="after every chunk, save each worker's certificates so far to "
                             "DIR/<checkpoint>-w<worker>.pt (kept if the run is cut short)")
    parser.add_argument("--resume", action="store_true",
                        help="with --partial: continue from the certificates saved there")
    parser.add_argument("--holdout", type=int, default=0, metavar="H",
                        help="certify the first --images of the last H training images "
                             "(never trained on) instead of the test images")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "smoothing.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import scipy.stats  # noqa: F401  (imported before the clock starts)

    x, y = _images(args)
    load_start = os.getloadavg()[0]
    print(f"load average at start {load_start:.1f}", flush=True)
    results = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        _check_not_trained_on(Path(path), args)
        results[name] = cached_certify(Path(path), x, y, args)
    print(table(results))
    split = f"held-out training images (last {args.holdout})" if args.holdout else "test images"
    print(f"{args.images} {split}, sigma={args.sigma}, n0={args.n0}, n={args.n}, "
          f"alpha={args.alpha}, {args.threads} thread(s); load average {load_start:.1f} at "
          f"start, {os.getloadavg()[0]:.1f} at end")
    if args.plot is not None:
        plot(results, y, args.plot, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({name: {k: v for k, v in res.items() if k != "cert"}
                                    | {"samples": res["cert"].to_dict(y)}
                                    for name, res in results.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
