"""Soundness fuzz: random small networks with weights and biases of 1e-2 .. 1e8, every verifier
against the lowest margin a float64 search reaches.

Run by hand (one family at a time, or all)::

    python bench/soundness_fuzz.py --family chain --seeds 0 2000
    python bench/soundness_fuzz.py --family all --seeds 0 500

Families: ``chain`` (ReLU MLPs, linf), ``dag`` (residual adds, concatenations, sigmoid / tanh /
leaky ReLU through torch.fx, linf), ``norms`` (ReLU MLPs under l1 and l2 balls), ``conv``
(convolutions, batch norm, average pooling, linf), ``vnnlib`` (``verify_property`` on random
boxes and random disjunctions of single output constraints) and ``onnx`` (the same properties
written as VNNLIB text, the network as an ONNX Gemm / Relu graph, through ``run_instance``: the
importer, the parser and the runner; a "sat" counterexample is re-checked by ONNX's reference
evaluator in float32, as a competition checker would), and ``conj`` (disjunctions of
conjunctions of 1-4 output constraints, such as ACAS Xu's "output 0 is minimal", on boxes of
different widths per input in half the seeds and on a union of two boxes (the box less a slab
of one input) in a third of them, through
``verify_property`` with ``auto``, ``crown``, ``milp`` and ``bab``, and on odd seeds through the
ONNX route too). Half the seeds draw weights of
1e-2 .. 1e8 (float32 rounding, catastrophic cancellation, solver tolerances), the others of
1e-2 .. 10.

A check fails when a method says VERIFIED ("unsat") while the search found a point of the set
whose float64 margin is below ``-1e-9`` of the outputs' size, when a method's lower bound lies
above such a point's margin, when a witness is outside the set or does not break the margin in
float64, when the MILP, BaB or ``auto`` runs more than 10 s past its time limit (families
``chain``, ``dag``, ``norms``, ``conv``), or when a method raises anything but its documented
refusal of a network it does not handle (``UnsupportedLayerError``: BaB on sigmoid / tanh /
leaky ReLU, the Lipschitz bounds on DAGs), which is counted apart. The search (20,000 uniform
points, the box's corners in up to 4 dimensions, then 100 signed-gradient steps from the 20
lowest) only ever finds real points, so a failed check is a real soundness bug (or a float64
evaluation error of the oracle itself, which the relative tolerance keeps far away).
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrobust.core import LpBall, Verdict
from advrobust.errors import UnsupportedLayerError
from advrobust.evaluation.verify import verify_dataset, verify_property
from advrobust.exact import MILP, BaB
from advrobust.network.vnnlib import OutputPolytope, VnnProperty
from advrobust.relax import CROWN, IBP, GlobalLipschitz, LocalLipschitz, LPRelaxation

FAMILIES = ("chain", "dag", "norms", "conv", "vnnlib", "onnx", "conj")


#: Seconds a method may run on one sample beyond its time limit before the fuzz counts it
#: "over its time limit" (a limit that does not hold is a bug too: session 25 found
#: ``MILP(time_limit=10)`` running for over 10 minutes on weights ~1e6).
_OVERRUN = 10.0

#: The per-sample time limits of the methods below (the LP's is per LP: not timed).
_LIMITS = {"milp": 10.0, "bab": 3.0, "bab-2-workers": 3.0}


def _methods(norm: str) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {
        "ibp": IBP, "crown": CROWN, "alpha-crown": lambda: CROWN(alpha=True, steps=10),
        "ibp-float32": lambda: IBP(precision="float32"),
        "crown-float32": lambda: CROWN(precision="float32"),
        "alpha-crown-float32": lambda: CROWN(alpha=True, steps=10, precision="float32"),
        "global-lipschitz": GlobalLipschitz, "local-lipschitz": LocalLipschitz}
    if norm != "l2":
        out |= {"lp": lambda: LPRelaxation(time_limit=10),
                "milp": lambda: MILP(time_limit=_LIMITS["milp"])}
    if norm == "linf":
        out |= {"bab": lambda: BaB(time_limit=_LIMITS["bab"]),
                "bab-2-workers": lambda: BaB(time_limit=_LIMITS["bab"], workers=2)}
    return out


# ---------------------------------------------------------------------- networks
def _draw(t: Tensor, g: torch.Generator, wild: bool) -> None:
    scale = 10 ** float(torch.empty(1).uniform_(-2, 8 if wild else 1, generator=g))
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=g) * scale)


def _int(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _finish(model: nn.Module, g: torch.Generator, wild: bool) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            _draw(m.weight, g, wild)
            if m.bias is not None:
                _draw(m.bias, g, wild)
    return model.eval()


def chain_net(g: torch.Generator, wild: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """A ReLU MLP of 1-3 hidden layers of 2-6 neurons on 1-4 inputs."""
    widths = [_int(g, 1, 4)] + [_int(g, 2, 6) for _ in range(_int(g, 1, 3))] + [_int(g, 2, 3)]
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    return _finish(nn.Sequential(*layers[:-1]), g, wild), (widths[0],)


class _Dag(nn.Module):
    """x -> a -> act1 -> b -> act2, then a residual / concatenation join and a linear head."""

    ACTS: tuple[Callable[[], nn.Module], ...] = (nn.ReLU, nn.ReLU, nn.Sigmoid, nn.Tanh,
                                                 lambda: nn.LeakyReLU(0.1))

    def __init__(self, g: torch.Generator, d: int, h: int, k: int) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(2 * h, k)
        self.act1 = self.ACTS[_int(g, 0, len(self.ACTS) - 1)]()
        self.act2 = self.ACTS[_int(g, 0, len(self.ACTS) - 1)]()
        self.join = _int(g, 0, 2)

    def forward(self, x: Tensor) -> Tensor:
        z = self.act1(self.a(x))
        r = self.act2(self.b(z))
        joined = (torch.cat([z + r, r], dim=1), torch.cat([r, z], dim=1),
                  torch.cat([z - r, 2.0 * r], dim=1))[self.join]
        return self.c(joined)


def dag_net(g: torch.Generator, wild: bool) -> tuple[nn.Module, tuple[int, ...]]:
    d = _int(g, 1, 3)
    return _finish(_Dag(g, d, _int(g, 2, 4), _int(g, 2, 3)), g, wild), (d,)


def conv_net(g: torch.Generator, wild: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """conv (stride 1-2, padding 0-1) [+ batch norm] + ReLU [+ avgpool] [+ conv 2x2 + ReLU],
    then flatten, linear 4, ReLU, linear; 1-2 channels of 4x4 .. 6x6."""
    c, hw, c1, k1 = _int(g, 1, 2), _int(g, 4, 6), _int(g, 1, 3), _int(g, 2, 3)
    stride, pad = _int(g, 1, 2), _int(g, 0, 1)
    layers: list[nn.Module] = [nn.Conv2d(c, c1, k1, stride=stride, padding=pad)]
    if float(torch.rand(1, generator=g)) < 0.3:
        bn = nn.BatchNorm2d(c1)
        with torch.no_grad():
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(torch.randn(c1, generator=g))
            bn.running_var.copy_(torch.rand(c1, generator=g) + 0.1)
            bn.weight.copy_(torch.randn(c1, generator=g))
            bn.bias.copy_(torch.randn(c1, generator=g))
        layers.append(bn)
    layers.append(nn.ReLU())
    h = (hw + 2 * pad - k1) // stride + 1
    if h >= 2 and float(torch.rand(1, generator=g)) < 0.5:
        layers.append(nn.AvgPool2d(2))
        h //= 2
    if h >= 2 and float(torch.rand(1, generator=g)) < 0.5:
        c2 = _int(g, 1, 2)
        layers += [nn.Conv2d(c1, c2, 2), nn.ReLU()]
        c1, h = c2, h - 1
    layers += [nn.Flatten(), nn.Linear(c1 * h * h, 4), nn.ReLU(), nn.Linear(4, _int(g, 2, 3))]
    return _finish(nn.Sequential(*layers), g, wild), (c, hw, hw)


# ---------------------------------------------------------------------- the oracle
def _margin(twin: nn.Module, xs: Tensor, y: int) -> Tensor:
    out = twin(xs)
    other = out.clone()
    other[:, y] = -torch.inf
    return out[:, y] - other.max(1).values


def _sample(x: Tensor, threat: LpBall, n: int, g: torch.Generator) -> Tensor:
    """``n`` points of the set (and its corners / vertices in low dimension), float64."""
    x = x.double()
    lo, hi = threat.input_bounds(x)
    if threat.norm.value == "linf":
        pts = lo + (hi - lo) * torch.rand((n,) + lo.shape[1:], generator=g, dtype=torch.float64)
        if lo[0].numel() <= 4:
            corners = torch.cartesian_prod(*[torch.stack([a, b]) for a, b in
                                             zip(lo.flatten(), hi.flatten(), strict=True)])
            pts = torch.cat([pts, corners.reshape((-1,) + lo.shape[1:])])
        return pts
    d = x[0].numel()
    if threat.norm.value == "l2":
        v = torch.randn(n, d, generator=g, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g,
                                                         dtype=torch.float64) ** (1 / d)
    else:
        e = -torch.log(torch.rand(n, d + 1, generator=g, dtype=torch.float64))
        v = e[:, :d] / e.sum(1, keepdim=True) * torch.randn(n, d, generator=g,
                                                            dtype=torch.float64).sign()
    eye = torch.eye(d, dtype=torch.float64)
    v = torch.cat([v, eye, -eye]) * threat.eps
    return (x.reshape(1, -1) + v).clamp(threat.lo, threat.hi).reshape((-1,) + x.shape[1:])


def _into(p: Tensor, x: Tensor, threat: LpBall) -> Tensor:
    """``p`` moved into the set (clamped to the box; l1 / l2 offsets scaled into the ball)."""
    if threat.norm.value == "linf":
        lo, hi = threat.input_bounds(x.double())
        return torch.maximum(torch.minimum(p, hi), lo)
    delta = (p - x.double()).flatten(1)
    size = delta.norm(p=1 if threat.norm.value == "l1" else 2, dim=1, keepdim=True)
    delta = delta * torch.clamp(threat.eps / size.clamp_min(1e-300), max=1.0)
    return (x.double() + delta.reshape(p.shape)).clamp(threat.lo, threat.hi)


def lowest_margin(twin: nn.Module, x: Tensor, y: int, threat: LpBall, g: torch.Generator
                  ) -> float:
    """The lowest float64 margin at points of the set: sampling, then signed-gradient steps."""
    pts = _sample(x, threat, 20_000, g)
    with torch.no_grad():
        m = _margin(twin, pts, y)
    start = pts[m.topk(min(20, m.numel()), largest=False).indices].clone()
    size = threat.eps if threat.norm.value != "linf" else 2 * threat.eps
    for step in range(100):
        with torch.enable_grad():
            start.requires_grad_(True)
            grad, = torch.autograd.grad(_margin(twin, start, y).sum(), start)
        with torch.no_grad():
            start = _into(start - 0.05 * size * 0.97 ** step * grad.sign(), x, threat)
    with torch.no_grad():
        return min(float(m.min()), float(_margin(twin, start, y).min()))


# ---------------------------------------------------------------------- the checks
def _check(result: Any, lower: float | None, low: float, tol: float, twin: nn.Module,
           x: Tensor, y: int, threat: LpBall) -> str | None:
    verdict = result.verdict[0]
    if verdict is Verdict.VERIFIED and low < -tol:
        return "wrong VERIFIED"
    if lower is not None and lower > low + tol:
        return "bound above a reached point"
    if verdict is Verdict.FALSIFIED:
        w = result.witness.double().reshape(x.shape)
        if float((_into(w, x, threat) - w).abs().max()) > 1e-12 * (1 + float(w.abs().max())):
            return "witness outside the set"
        with torch.no_grad():
            if float(_margin(twin, w, y)[0]) >= 0:
                return "witness does not break the margin"
    return None


def check_ball(family: str, seed: int, time_limit: float) -> Counter[str]:
    """Every method on one random network and ball; counts of each failed check."""
    g = torch.Generator().manual_seed(seed)
    wild = seed % 2 == 0
    build = {"chain": chain_net, "norms": chain_net, "dag": dag_net, "conv": conv_net}[family]
    model, shape = build(g, wild)
    norm = ("l1", "l2")[seed % 2] if family == "norms" else "linf"
    x = torch.rand((1,) + shape, generator=g)
    with torch.no_grad():
        y = int(model(x).argmax(1))
    eps = float(10 ** torch.empty(1).uniform_(-4, 0 if norm == "linf" else 0.3, generator=g))
    threat = LpBall(norm, eps)
    twin = copy.deepcopy(model).double()
    low = lowest_margin(twin, x, y, threat, g)
    with torch.no_grad():
        tol = 1e-9 * (float(twin(x.double()).abs().max()) + abs(low) + 1.0)
    found: Counter[str] = Counter()
    methods: dict[str, Callable[[], Any] | None] = {**_methods(norm), "auto": None}
    for name, make in methods.items():
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if make is None:
                    result = verify_dataset(model, x, torch.tensor([y]), threat, method="auto",
                                            time_limit=time_limit, progress=False,
                                            generator=torch.Generator().manual_seed(0))
                    lower = None
                else:
                    result = make()(model, x, torch.tensor([y]), threat)
                    lower = float(result.lower.min())
            except UnsupportedLayerError:  # a documented refusal (BaB / Lipschitz on a DAG)
                found[f"{name}: refused (UnsupportedLayerError)"] += 1
                continue
            except Exception as err:  # noqa: BLE001 - the fuzz counts every other exception
                found[f"{name}: {type(err).__name__}"] += 1
                continue
        found[f"answer: {result.verdict[0].value}"] += 1
        limit = time_limit if make is None else _LIMITS.get(name, math.inf)
        if time.perf_counter() - start > limit + _OVERRUN:
            found[f"{name}: over its time limit"] += 1
        issue = _check(result, lower, low, tol, twin, x, y, threat)
        if issue:
            found[f"{name}: {issue}"] += 1
        if any("consistency" in str(w.message) for w in caught):
            found[f"{name}: consistency check (UNKNOWN)"] += 1
    return found


def check_vnnlib(seed: int, time_limit: float) -> Counter[str]:
    """``verify_property`` on a random box and 1-3 random single-constraint disjuncts."""
    g = torch.Generator().manual_seed(10_000_000 + seed)
    model, (d,) = chain_net(g, seed % 2 == 0)
    twin = copy.deepcopy(model).double()
    prop, out = _random_property(g, twin, d)
    found, res = _ask("vnnlib", prop, out, lambda: verify_property(
        model, prop, time_limit=time_limit, generator=torch.Generator().manual_seed(0)))
    if res is not None and res.status == "sat":
        w = torch.as_tensor(res.counterexample).double().reshape(1, -1)
        with torch.no_grad():
            unsafe = bool(prop.is_unsafe(twin(w))[0])
        if not bool(((w >= prop.lower) & (w <= prop.upper)).all()) or not unsafe:
            found["vnnlib: bad counterexample"] += 1
    return found


def check_conj(seed: int, time_limit: float, folder: Path) -> Counter[str]:
    """Disjunctions of conjunctions through ``verify_property`` (several methods) and, on odd
    seeds, through ``run_instance`` on ONNX and VNNLIB text."""
    from advrobust.evaluation.vnncomp import Instance, run_instance

    g = torch.Generator().manual_seed(30_000_000 + seed)
    model, (d,) = chain_net(g, seed % 4 < 2)
    twin = copy.deepcopy(model).double()
    prop, out = _random_property(g, twin, d, conj=True)
    found: Counter[str] = Counter()
    for method in ("auto", "crown", "milp", "bab"):
        got, res = _ask(f"conj {method}", prop, out, lambda m=method: verify_property(
            model, prop, method=m, time_limit=time_limit,
            generator=torch.Generator().manual_seed(0)))
        found += got
        if res is not None and res.status == "sat":
            w = torch.as_tensor(res.counterexample).double().reshape(1, -1)
            with torch.no_grad():
                unsafe = bool(prop.is_unsafe(twin(w))[0])
            if not bool(prop.contains(w, atol=0.0)[0]) or not unsafe:
                found[f"conj {method}: bad counterexample"] += 1
    if seed % 2:
        net, spec = folder / f"conj_{seed}.onnx", folder / f"conj_{seed}.vnnlib"
        _onnx_chain(model, net)
        spec.write_text(_vnnlib_text(prop))
        found += _ask("conj onnx", prop, out,
                      lambda: run_instance(Instance(net, spec, time_limit)))[0]
    return found


def _random_property(g: torch.Generator, twin: nn.Module, d: int, conj: bool = False
                     ) -> tuple[VnnProperty, Tensor]:
    """A box in [0, 1] and 1-3 random single-constraint disjuncts around the outputs' range
    (``conj``: half the boxes of different widths per input, 1-2 disjuncts of 1-4
    constraints each, every other one "output j is minimal", the thresholds around a sampled
    output); also the outputs (float64) at 20,000 points of the box."""
    with torch.no_grad():
        k = int(twin(torch.zeros(1, d, dtype=torch.float64)).shape[1])
    centre = torch.rand(d, generator=g, dtype=torch.float64) * 0.8 + 0.1
    eps = float(10 ** torch.empty(1).uniform_(-3, -0.5, generator=g))
    half = torch.full((d,), eps, dtype=torch.float64)
    if conj and _int(g, 0, 1):  # a box that is no cube: widths 0.05 .. 1 of eps per input
        half = half * (0.05 + 0.95 * torch.rand(d, generator=g, dtype=torch.float64))
    lo, hi = (centre - half).clamp(0, 1), (centre + half).clamp(0, 1)
    pts = lo + (hi - lo) * torch.rand(20_000, d, generator=g, dtype=torch.float64)
    cases: tuple[tuple[Tensor, Tensor], ...] = ()
    if conj and _int(g, 0, 2) == 0:  # a union of two boxes: the box less a slab of one input
        i = _int(g, 0, d - 1)
        first_hi, second_lo = hi.clone(), lo.clone()
        first_hi[i] = lo[i] + 0.3 * (hi[i] - lo[i])
        second_lo[i] = lo[i] + 0.6 * (hi[i] - lo[i])
        cases = ((lo.clone(), first_hi), (second_lo, hi.clone()))
        pts = torch.cat([a + (b - a) * torch.rand(10_000, d, generator=g, dtype=torch.float64)
                         for a, b in cases])
    with torch.no_grad():
        out = twin(pts)
    polys = []
    for _ in range(_int(g, 1, 2) if conj else 0):
        if _int(g, 0, 1):  # "output j is minimal": rows y_j - y_i <= b
            j, m = _int(g, 0, k - 1), k - 1
            a = torch.zeros(m, k, dtype=torch.float64)
            a[:, j] = 1.0
            a[torch.arange(m), [i for i in range(k) if i != j]] = -1.0
        else:
            m = _int(g, 1, 4)
            a = torch.randn(m, k, generator=g, dtype=torch.float64)
        values = out @ a.T  # (20,000, m)
        anchor = values[_int(g, 0, values.shape[0] - 1)]
        spread = values.max(0).values - values.min(0).values
        shift = torch.empty(m, dtype=torch.float64).uniform_(-0.4, 0.1, generator=g)
        polys.append(OutputPolytope(a, anchor + shift * spread))
    for _ in range(0 if conj else _int(g, 1, 3)):
        a = torch.randn(1, k, generator=g, dtype=torch.float64)
        values = (out @ a.T)[:, 0]
        q = float(torch.empty(1).uniform_(-0.6, 0.2, generator=g))
        b = torch.quantile(values, q) if q > 0 else values.min() - abs(float(values.min())) * 0.01
        polys.append(OutputPolytope(a, b.reshape(1)))
    return VnnProperty(lo, hi, tuple(polys), k, cases), out


def _ask(label: str, prop: VnnProperty, out: Tensor, call: Callable[[], Any]
         ) -> tuple[Counter[str], Any]:
    """Run ``call`` (a property's verifier), count its answer, an exception or an "unsat"
    that a sampled output (``out``) contradicts; return the counts and the result (None if it
    raised)."""
    found: Counter[str] = Counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = call()
    except Exception as err:  # noqa: BLE001 - the fuzz counts every exception
        found[f"{label}: {type(err).__name__}"] += 1
        return found, None
    status = getattr(res, "status", None) or res.result
    found[f"answer: {status}"] += 1
    if status == "unsat" and bool(_strictly_unsafe(prop, out).any()):
        found[f"{label}: wrong unsat"] += 1
    return found, res


def _strictly_unsafe(prop: VnnProperty, out: Tensor) -> Tensor:
    """Bool (N,): outputs inside an unsafe disjunct by more than 1e-9 of their size."""
    size = 1e-9 * (1.0 + out.abs().max(1, keepdim=True).values)
    return torch.stack([((out @ p.A.T - p.b) < -size).all(1) for p in prop.unsafe]).any(0)


def _vnnlib_text(prop: VnnProperty) -> str:
    """The property as VNNLIB text (every number printed exactly: ``repr`` of a float64)."""
    lines = [f"(declare-const X_{i} Real)" for i in range(prop.num_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)]
    boxes = []
    for lo, hi in prop.cases or ((prop.lower, prop.upper),):
        boxes.append(" ".join(f"(>= X_{i} {float(lo[i])!r}) (<= X_{i} {float(hi[i])!r})"
                              for i in range(prop.num_inputs)))
    if len(boxes) == 1:
        lines.append(f"(assert (and {boxes[0]}))")
    else:
        lines.append(f"(assert (or {' '.join(f'(and {b})' for b in boxes)}))")
    terms = []
    for p in prop.unsafe:
        rows = []
        for a, b in zip(p.A.tolist(), p.b.tolist(), strict=True):
            coefs = " ".join(f"(* {float(v)!r} Y_{j})" for j, v in enumerate(a))
            rows.append(f"(<= (+ {coefs}) {float(b)!r})")
        terms.append(f"(and {' '.join(rows)})")
    lines.append(f"(assert (or {' '.join(terms)}))")
    return "\n".join(lines) + "\n"


def _onnx_chain(model: nn.Module, path: Path) -> None:
    """Write a ReLU MLP (``nn.Sequential`` of Linear / ReLU) as an ONNX Gemm / Relu graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    last, d, k = "x", 0, 0
    for i, m in enumerate(model.children()):
        if isinstance(m, nn.Linear):
            d, k = d or m.in_features, m.out_features
            w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
        else:
            nodes.append(helper.make_node("Relu", [last], [f"h{i}"]))
        last = f"h{i}"
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, d])], [helper.make_tensor_value_info(
            last, TensorProto.FLOAT, [1, k])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def check_onnx(seed: int, time_limit: float, folder: Path) -> Counter[str]:
    """``run_instance`` on an ONNX file and a VNNLIB text written from a random chain and
    property (the ``vnnlib`` family's draws, on another seed stream)."""
    from onnx.reference import ReferenceEvaluator

    from advrobust.evaluation.vnncomp import Instance, run_instance

    g = torch.Generator().manual_seed(20_000_000 + seed)
    model, (d,) = chain_net(g, seed % 2 == 0)
    twin = copy.deepcopy(model).double()
    prop, out = _random_property(g, twin, d)
    net, spec = folder / f"net_{seed}.onnx", folder / f"prop_{seed}.vnnlib"
    _onnx_chain(model, net)
    spec.write_text(_vnnlib_text(prop))
    found, res = _ask("onnx", prop, out, lambda: run_instance(Instance(net, spec, time_limit)))
    if res is not None and res.result == "sat":
        assert res.counterexample is not None
        x = res.counterexample.numpy().astype(np.float32).reshape(1, d)
        evaluator: Any = ReferenceEvaluator(str(net))
        y = np.asarray(evaluator.run(None, {"x": x})[0])
        inside = bool(((x >= prop.lower.numpy()) & (x <= prop.upper.numpy())).all())
        if not inside or not bool(prop.is_unsafe(torch.from_numpy(y).double())[0]):
            found["onnx: counterexample not confirmed by the ONNX reference evaluator"] += 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES + ("all",), default="all")
    parser.add_argument("--seeds", nargs=2, type=int, default=(0, 200), metavar=("FIRST", "COUNT"))
    parser.add_argument("--time-limit", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    families = FAMILIES if args.family == "all" else (args.family,)
    first, count = args.seeds
    with tempfile.TemporaryDirectory(prefix="advrobust-fuzz-") as scratch:
        for family in families:
            _run_family(family, first, count, args.time_limit, Path(scratch))


def _run_family(family: str, first: int, count: int, time_limit: float, scratch: Path) -> None:
    """Check seeds ``first .. first + count - 1`` of one family and print the summary."""
    start, total, failing = time.perf_counter(), Counter[str](), {}
    for seed in range(first, first + count):
        if family == "vnnlib":
            found = check_vnnlib(seed, time_limit)
        elif family == "onnx":
            found = check_onnx(seed, time_limit, scratch)
        elif family == "conj":
            found = check_conj(seed, time_limit, scratch)
        else:
            found = check_ball(family, seed, time_limit)
        total += found
        bad = [k for k in found if not any(w in k for w in ("answer", "consistency", "refused"))]
        if bad:
            failing[seed] = bad
            print(f"{family} seed {seed}: {bad}", flush=True)
    print(f"\n{family}: seeds {first}..{first + count - 1}, {time.perf_counter() - start:.0f} s")
    for key, n in sorted(total.items()):
        print(f"  {key}: {n}")
    print(f"  failing seeds: {sorted(failing) or 'none'}\n", flush=True)


if __name__ == "__main__":
    main()
