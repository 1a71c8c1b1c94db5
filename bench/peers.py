"""Side-by-side attack-peer harness: advrobust vs torchattacks, Foolbox, ART and AutoAttack.

Run by hand (never by pytest). The peers live in a side virtual environment outside the
repository; they are never dependencies of the project:

    python3 -m venv ../peers-venv
    ../peers-venv/bin/pip install torch==2.13.0            # the local CPU wheel, first
    ../peers-venv/bin/pip install foolbox adversarial-robustness-toolbox packaging
    ../peers-venv/bin/pip install --no-deps torchattacks requests
    # the ORIGINAL AutoAttack (fra31/auto-attack) from its GitHub snapshot:
    ../peers-venv/bin/pip install --no-deps /path/to/auto-attack
    PYTHONPATH=src ../peers-venv/bin/python bench/peers.py --model M.pt \
        --data-dir ../shared/data/mnist --n 200 --cases pgd-linf,pgd-l2,deepfool,cw \
        --peers torchattacks,foolbox,art --repeats 2 --out bench/peers_run

(if a peer's install upgrades torch, reinstall ``torch==2.13.0`` afterwards). One process, one
model, the same correctly classified MNIST test images and batches for every side, one thread,
the sides' order alternated (advrobust first on even repeats, last on odd ones) and repeated.
Each side is seeded the same way before it runs (``torch.manual_seed(seed)``: the peers draw
from the global generator; advrobust gets a ``torch.Generator`` with the same seed). Scores come
from the returned tensors only, through the model: robust accuracy at the case's eps (a sample
counts as broken when its returned point is misclassified and within eps), per-sample agreement
with advrobust, median norm of the successes, box and ball violations, images/s. The load
average before and after every case is recorded. Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from peers_cases import CASES, Case
from torch import Tensor, nn

RunFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _data(args: argparse.Namespace, model: nn.Module) -> tuple[Tensor, Tensor]:
    from advrobust.data import load_dataset

    data = load_dataset("mnist", split="test", root=args.data_dir)
    x, y = data.x[: 2 * args.n + 100], data.y[: 2 * args.n + 100]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep][: args.n].contiguous(), y[keep][: args.n].contiguous()


def _score(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, case: Case) -> dict[str, object]:
    """Scores of one run, from the returned tensor only."""
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in x_adv.split(500)])
    delta = (x_adv - x).flatten(1)
    norm = delta.abs().amax(1) if case.norm == "linf" else delta.norm(dim=1)
    within = norm <= case.eps + 1e-5
    broken = (pred != y) & within
    box = int(((x_adv < -1e-6) | (x_adv > 1 + 1e-6)).flatten(1).any(1).sum())
    ball = int((~within).sum()) if case.bounded else 0
    succ = norm[pred != y]
    return {"broken": broken.tolist(), "robust_accuracy": 1 - float(broken.float().mean()),
            "median_norm": float(succ.median()) if succ.numel() else None,
            "box_violations": box, "ball_violations": ball,
            "nan": int((~torch.isfinite(x_adv)).flatten(1).any(1).sum())}


def _run_side(fn: RunFn, model: nn.Module, x: Tensor, y: Tensor, batch: int,
              seed: int) -> tuple[Tensor, float]:
    torch.manual_seed(seed)
    outs, start = [], time.perf_counter()
    for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
        outs.append(fn(model, xb, yb).detach())
    return torch.cat(outs), time.perf_counter() - start


def _case_rows(case: Case, sides: dict[str, RunFn], model: nn.Module, x: Tensor, y: Tensor,
               args: argparse.Namespace) -> dict[str, object]:
    names = list(sides)
    runs: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            x_adv, secs = _run_side(sides[name], model, x, y, args.batch, args.seed)
            score = _score(model, x, y, x_adv, case)
            score.update(seconds=secs, images_per_s=x.shape[0] / secs, position=order.index(name))
            runs[name].append(score)
            print(f"  {case.name} rep {rep} {name}: robust {score['robust_accuracy']:.3f} "
                  f"{secs:.1f}s", file=sys.stderr, flush=True)
    ours = runs["advrobust"][0]["broken"]
    summary = {}
    for name, rs in runs.items():
        first = rs[0]
        agree = sum(a == b for a, b in zip(first["broken"], ours, strict=True)) / len(ours)  # type: ignore
        secs = [float(r["seconds"]) for r in rs]  # type: ignore[arg-type]
        summary[name] = {
            "robust_accuracy": sorted({round(float(r["robust_accuracy"]), 4) for r in rs}),
            "agreement_with_advrobust": agree, "median_norm": first["median_norm"],
            "box_violations": max(int(r["box_violations"]) for r in rs),  # type: ignore
            "ball_violations": max(int(r["ball_violations"]) for r in rs),  # type: ignore
            "nan": max(int(r["nan"]) for r in rs),  # type: ignore[call-overload]
            "seconds": secs, "images_per_s": [x.shape[0] / s for s in secs]}
    _paired_ratios(summary)
    return {"case": case.name, "what": case.what, "norm": case.norm, "eps": case.eps,
            "load_before": load_before, "load_after": os.getloadavg(), "sides": summary}


def _paired_ratios(summary: dict[str, dict[str, object]]) -> None:
    """Time / advrobust's per repeat (the two sides ran back to back in that repeat): the
    range over repeats."""
    ours = summary["advrobust"]["seconds"]
    for side in summary.values():
        pairs = [a / b for a, b in zip(side["seconds"], ours, strict=True)]  # type: ignore
        side["time_ratio_to_advrobust"] = [min(pairs), max(pairs)]


def _markdown(meta: dict[str, object], results: list[dict[str, object]]) -> str:
    lines = [f"Command: `{meta['command']}`", "",
             f"Date {meta['date']}, {meta['machine']}, torch {meta['torch']}, one thread, "
             f"{meta['n']} correctly classified MNIST test images, model `{meta['model']}`, "
             f"{meta['repeats']} repeats with the order of the sides alternated. Peers: "
             f"{meta['peers']}.", ""]
    for res in results:
        lb, la = res["load_before"], res["load_after"]  # type: ignore[misc]
        lines += [f"**{res['case']}** — {res['what']} (load {lb[0]:.1f} -> {la[0]:.1f})", "",
                  "| side | robust acc. | agrees with advrobust | median norm | box / ball "
                  "viol. | images/s | time / advrobust's, same repeat |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in res["sides"].items():  # type: ignore[attr-defined]
            ips = s["images_per_s"]
            ratio = s["time_ratio_to_advrobust"]
            mn = "-" if s["median_norm"] is None else f"{s['median_norm']:.3f}"
            acc = " / ".join(f"{a:.3f}" for a in s["robust_accuracy"])
            lines.append(f"| {name} | {acc} | {s['agreement_with_advrobust']:.3f} | {mn} | "
                         f"{s['box_violations']} / {s['ball_violations']} | "
                         f"{min(ips):.1f}-{max(ips):.1f} | {ratio[0]:.2f}-{ratio[1]:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint written by advrobust train")
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--cases", default="pgd-linf,pgd-l2,deepfool,cw",
                        help=f"comma-separated among {', '.join(CASES)}")
    parser.add_argument("--peers", default="torchattacks,foolbox,art,autoattack")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    parser.add_argument("--render", action="store_true",
                        help="only re-render OUT.md from an existing OUT.json")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        for res in saved["results"]:
            _paired_ratios(res["sides"])
        args.out.with_suffix(".md").write_text(_markdown(saved["meta"], saved["results"]))
        print(_markdown(saved["meta"], saved["results"]))
        return
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from advrobust.models import load_checkpoint

    model = load_checkpoint(args.model).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = _data(args, model)
    peers = [p for p in args.peers.split(",") if p]
    results = []
    for name in args.cases.split(","):
        case = CASES[name]
        sides = case.sides(peers)
        print(f"{name}: sides {list(sides)}", file=sys.stderr, flush=True)
        results.append(_case_rows(case, sides, model, x, y, args))
    meta = {"command": " ".join(["python"] + sys.argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)",
            "torch": torch.__version__, "n": int(x.shape[0]), "model": args.model,
            "repeats": args.repeats, "peers": ", ".join(_versions(peers))}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}))
    args.out.with_suffix(".md").write_text(_markdown(meta, results))
    print(_markdown(meta, results))


def _versions(peers: list[str]) -> list[str]:
    found = []
    for name, module in (("torchattacks", "torchattacks"), ("foolbox", "foolbox"),
                         ("art", "art"), ("autoattack", "autoattack")):
        if name in peers:
            try:
                mod = __import__(module)
                found.append(f"{name} {getattr(mod, '__version__', 'fra31 snapshot')}")
            except ImportError:
                found.append(f"{name} (not importable: skipped)")
    return found


if __name__ == "__main__":
    main()
