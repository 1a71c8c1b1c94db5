"""The comparisons of bench/peers.py: one threat and one setting per case, each side built the
same way (equal steps, step sizes, restarts, binary-search steps, constants). Peers are imported
lazily; a peer that is not importable or has no counterpart is left out of the case."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

RunFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
#: l2 ceiling given to advrobust's minimum-norm attacks (no ceiling in practice; the case's eps
#: scores everybody the same way).
UNBOUNDED = 1e3
MNIST_SHAPE = (1, 28, 28)


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Case:
    """One comparison: threat, what is compared, and a builder per side."""

    name: str
    what: str
    norm: str
    eps: float
    bounded: bool
    builders: dict[str, Callable[[Case], RunFn]] = field(default_factory=dict)

    def sides(self, peers: list[str]) -> dict[str, RunFn]:
        out = {k: b(self) for k, b in self.builders.items() if k.startswith("advrobust")}
        for peer in peers:
            module = {"art": "art", "autoattack": "autoattack"}.get(peer, peer)
            if peer in self.builders and _have(module):
                out[peer] = self.builders[peer](self)
        return out


def _ours(make: Callable[[Case], object], ceiling: float | None = None) -> Callable[[Case], RunFn]:
    def build(case: Case) -> RunFn:
        from advrobust import LpBall

        attack = make(case)
        threat = LpBall(case.norm, ceiling if ceiling is not None else case.eps)

        def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            gen = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
            return attack(model, x, y, threat, generator=gen).x_adv  # type: ignore[operator]
        return run
    return build


def _fb(make: Callable[[Case], object], minimum_norm: bool = False) -> Callable[[Case], RunFn]:
    def build(case: Case) -> RunFn:
        import foolbox as fb

        attack = make(case)

        def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            fmodel = fb.PyTorchModel(model, bounds=(0, 1))
            raw, clipped, _ = attack(fmodel, x, y,  # type: ignore[operator]
                                     epsilons=None if minimum_norm else case.eps)
            return raw if minimum_norm else clipped
        return run
    return build


def _ta(make: Callable[[nn.Module, Case], object]) -> Callable[[Case], RunFn]:
    def build(case: Case) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return make(model, case)(x, y)  # type: ignore[operator]
        return run
    return build


def _art(make: Callable[[object, Case], object]) -> Callable[[Case], RunFn]:
    def build(case: Case) -> RunFn:
        def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            from art.estimators.classification import PyTorchClassifier

            clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                                    input_shape=MNIST_SHAPE, nb_classes=10, clip_values=(0, 1),
                                    device_type="cpu")
            out = make(clf, case).generate(x.numpy(), y=y.numpy())  # type: ignore[attr-defined]
            return torch.from_numpy(out)
        return run
    return build


def _autoattack(case: Case) -> RunFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from autoattack import AutoAttack

        aa = AutoAttack(model, norm="Linf" if case.norm == "linf" else "L2", eps=case.eps,
                        version="standard", device="cpu", verbose=False,
                        seed=torch.initial_seed() % 2**31)
        return aa.run_standard_evaluation(x, y, bs=x.shape[0])
    return run


# ----------------------------------------------------------------------------- the cases
PGD_STEPS, PGD_RESTARTS = 40, 1


def _pgd_case(norm: str, eps: float) -> Case:
    alpha = 2.5 * eps / PGD_STEPS
    ta_cls = "PGD" if norm == "linf" else "PGDL2"
    fb_cls = "LinfPGD" if norm == "linf" else "L2PGD"
    return Case(
        f"pgd-{norm}", f"PGD-{PGD_STEPS}, step {alpha:g}, random start, {norm} eps {eps}",
        norm, eps, True, {
            "advrobust": _ours(lambda c: __import__("advrobust.attacks", fromlist=["PGD"]).PGD(
                steps=PGD_STEPS, step_size=alpha)),
            "torchattacks": _ta(lambda m, c: getattr(__import__("torchattacks"), ta_cls)(
                m, eps=eps, alpha=alpha, steps=PGD_STEPS, random_start=True)),
            "foolbox": _fb(lambda c: getattr(__import__("foolbox").attacks, fb_cls)(
                abs_stepsize=alpha, steps=PGD_STEPS, random_start=True)),
            "art": _art(lambda clf, c: __import__(
                "art.attacks.evasion", fromlist=["ProjectedGradientDescent"]
            ).ProjectedGradientDescent(clf, norm="inf" if norm == "linf" else 2, eps=eps,
                                       eps_step=alpha, max_iter=PGD_STEPS, num_random_init=1,
                                       batch_size=10_000, verbose=False)),
        })


def _deepfool_case(eps: float) -> Case:
    return Case(
        "deepfool", f"DeepFool l2, 50 steps, overshoot 0.02, 10 candidates; scored at eps {eps}",
        "l2", eps, False, {
            "advrobust": _ours(lambda c: __import__(
                "advrobust.attacks", fromlist=["DeepFool"]).DeepFool(
                steps=50, overshoot=0.02, candidates=10), UNBOUNDED),
            "torchattacks": _ta(lambda m, c: __import__("torchattacks").DeepFool(
                m, steps=50, overshoot=0.02)),
            "foolbox": _fb(lambda c: __import__("foolbox").attacks.L2DeepFoolAttack(
                steps=50, candidates=10, overshoot=0.02), minimum_norm=True),
            "art": _art(lambda clf, c: __import__(
                "art.attacks.evasion", fromlist=["DeepFool"]).DeepFool(
                clf, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=10_000,
                verbose=False)),
        })


def _cw_case(eps: float, lr: float, steps: int, bss: int, c0: float, tag: str) -> Case:
    return Case(
        f"cw{tag}", f"C&W l2, lr {lr}, {steps} steps x {bss} binary-search steps, initial "
        f"constant {c0:g}, abort early; scored at eps {eps}", "l2", eps, False, {
            "advrobust": _ours(lambda c: __import__(
                "advrobust.attacks", fromlist=["CarliniWagner"]).CarliniWagner(
                lr=lr, steps=steps, binary_search_steps=bss, initial_const=c0), UNBOUNDED),
            "foolbox": _fb(lambda c: __import__("foolbox").attacks.L2CarliniWagnerAttack(
                binary_search_steps=bss, steps=steps, stepsize=lr, initial_const=c0,
                abort_early=True), minimum_norm=True),
            "art": _art(lambda clf, c: __import__(
                "art.attacks.evasion", fromlist=["CarliniL2Method"]).CarliniL2Method(
                clf, learning_rate=lr, binary_search_steps=bss, max_iter=steps,
                initial_const=c0, batch_size=10_000, verbose=False)),
        })


def _strongest_case(norm: str, eps: float) -> Case:
    return Case(
        f"aa-{norm}", f"advrobust `strongest` (APGD-CE, APGD-T, Square), `strongest(fab=True)` "
        f"(+ FAB-T) vs the original AutoAttack version='standard' (APGD-CE, APGD-T, FAB-T, "
        f"Square) and torchattacks' AutoAttack; {norm} eps {eps}", norm, eps, True, {
            "advrobust": _ours(lambda c: __import__(
                "advrobust.attacks", fromlist=["strongest"]).strongest(
                __import__("advrobust").LpBall(norm, eps))),
            "advrobust+fab": _ours(lambda c: __import__(
                "advrobust.attacks", fromlist=["strongest"]).strongest(
                __import__("advrobust").LpBall(norm, eps), fab=True)),
            "autoattack": _autoattack,
            "torchattacks": _ta(lambda m, c: __import__("torchattacks").AutoAttack(
                m, norm="Linf" if norm == "linf" else "L2", eps=eps, version="standard",
                n_classes=10, seed=torch.initial_seed() % 2**31)),
        })


CASES: dict[str, Case] = {c.name: c for c in (
    _pgd_case("linf", 0.1), _pgd_case("l2", 1.5), _deepfool_case(1.5),
    _cw_case(1.5, 0.01, 100, 5, 1e-3, ""), _cw_case(1.5, 0.1, 100, 5, 0.1, "-defaults"),
    _strongest_case("linf", 0.1), _strongest_case("l2", 1.5))}
