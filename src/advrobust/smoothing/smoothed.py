"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML 2019).

The smoothed classifier of a base classifier ``f`` is
``g(x) = argmax_c P(f(x + eps) = c)``, ``eps ~ N(0, sigma^2 I)``. If the top class has
probability ``p_A >= 1/2`` then ``g`` is constant on the l2 ball of radius
``sigma * Phi^-1(p_A)`` around x; CERTIFY estimates ``p_A`` from below by a Clopper-Pearson
bound on Monte-Carlo votes, so its radius holds with probability ``>= 1 - alpha`` over the noise.
Any network works: only forward passes of ``f`` are used.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_float, check_int
from advrobust.core.checks import looks_like_probabilities
from advrobust.core.modes import eval_mode, model_device
from advrobust.errors import InvalidInputError
from advrobust.smoothing._stats import (
    binomial_p_values,
    clopper_pearson_lower,
    min_n_to_certify,
    min_n_to_predict,
)
from advrobust.smoothing.result import ABSTAIN, SmoothedPrediction, SmoothingCertificate

__all__ = ["Smoothed"]


class Smoothed:
    """The Gaussian-smoothed version of a classifier, with PREDICT and CERTIFY.

    Cohen, Rosenfeld & Kolter, "Certified adversarial robustness via randomized smoothing",
    ICML 2019 (Algorithm "PREDICT" and "CERTIFY"). Noise is added to the inputs as they are
    (not clipped to the data box), as in the paper; the base model should have been trained
    under the same noise (``advrobust train --defense gaussian --sigma``).

    The model is run in eval mode without gradients; its mode, ``requires_grad`` flags and
    device are restored / left untouched. Noise is drawn on the inputs' device, ``batch_size``
    noisy copies at a time, from the ``generator`` given (never the global seed).

    Args:
        model: base classifier mapping (B, ...) inputs to (B, K) logits.
        sigma: noise standard deviation, > 0.

    Example::

        smoothed = Smoothed(model, sigma=0.5)
        cert = smoothed.certify(x, n0=100, n=10_000, alpha=0.001,
                                generator=torch.Generator().manual_seed(0))
        cert.certified_accuracy(y, [0.5, 1.0])   # certifies the SMOOTHED classifier
    """

    def __init__(self, model: nn.Module, sigma: float) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(
                f"The 'model' parameter of Smoothed must be a torch.nn.Module. Got "
                f"{type(model).__name__} instead.")
        self.model = model
        self.sigma = check_float(sigma, "sigma", "Smoothed", low=0.0, low_open=True)

    def __repr__(self) -> str:
        return f"Smoothed(model={type(self.model).__name__}, sigma={self.sigma!r})"

    def predict(self, x: Tensor, n: int = 10_000, alpha: float = 0.001,
                batch_size: int = 1000, generator: torch.Generator | None = None, *,
                progress: bool = False) -> SmoothedPrediction:
        """PREDICT: the smoothed class of each input, or abstain.

        Counts the base model's votes on ``n`` noisy copies and answers the top class when the
        two-sided binomial test of the top count against the runner-up (``p = 1/2``) is
        significant at ``alpha``; a non-abstained answer differs from g(x) with probability
        at most ``alpha``.

        Args:
            x: (N, ...) float inputs on the model's device.
            n: noisy copies per input, >= 1.
            alpha: test level in (0, 1).
            batch_size: noisy copies per forward pass, >= 1.
            generator: source of the noise (on x's device); None uses torch's default one.
            progress: show a tqdm bar.

        Returns:
            :class:`SmoothedPrediction` (prediction -1 where abstained).

        Raises:
            InvalidParameterError: n, alpha or batch_size out of range.
            InvalidInputError: x not a finite float batch, devices differ, bad model outputs.
        """
        n, alpha, batch_size = self._check(n, alpha, batch_size, "predict")
        self._warn_small_n(n, alpha, min_n_to_predict(alpha), "predict", "answer")
        with eval_mode(self.model, who="Smoothed.predict"), torch.no_grad():
            k = self._check_input(x, generator)
            with _bar(progress, x.shape[0] * n, "smoothed predict") as bar:
                counts = self._counts(x, n, k, batch_size, generator, bar)
        top2 = counts.topk(min(2, k), dim=1).values
        runner_up = top2[:, 1] if k > 1 else torch.zeros_like(top2[:, 0])
        p_value = binomial_p_values(top2[:, 0], runner_up)
        abstained = p_value > alpha
        prediction = torch.where(abstained, torch.full_like(counts[:, 0], ABSTAIN),
                                 counts.argmax(dim=1))
        return SmoothedPrediction(prediction, counts, p_value, abstained, self.sigma, alpha, n)

    def certify(self, x: Tensor, n0: int = 100, n: int = 10_000, alpha: float = 0.001,
                batch_size: int = 1000, generator: torch.Generator | None = None, *,
                progress: bool = False) -> SmoothingCertificate:
        """CERTIFY: the smoothed class of each input and an l2 radius where it cannot change.

        The class is the top vote of ``n0`` selection copies; ``n`` fresh estimation copies
        give the one-sided (1 - alpha) Clopper-Pearson lower bound ``p_lower`` on its
        probability; the radius is ``sigma * Phi^-1(p_lower)``, and the sample abstains when
        ``p_lower < 1/2``. Each certificate is wrong with probability at most ``alpha``.

        Args:
            x: (N, ...) float inputs on the model's device.
            n0: selection copies per input, >= 1.
            n: estimation copies per input, >= 1.
            alpha: error level in (0, 1).
            batch_size: noisy copies per forward pass, >= 1.
            generator: source of the noise (on x's device); None uses torch's default one.
            progress: show a tqdm bar.

        Returns:
            :class:`SmoothingCertificate` (about the smoothed classifier, not the base model).

        Raises:
            InvalidParameterError: n0, n, alpha or batch_size out of range.
            InvalidInputError: x not a finite float batch, devices differ, bad model outputs.
        """
        n0 = check_int(n0, "n0", "Smoothed.certify", low=1)
        n, alpha, batch_size = self._check(n, alpha, batch_size, "certify")
        self._warn_small_n(n, alpha, min_n_to_certify(alpha), "certify", "certify any radius")
        with eval_mode(self.model, who="Smoothed.certify"), torch.no_grad():
            k = self._check_input(x, generator)
            with _bar(progress, x.shape[0] * (n0 + n), "smoothed certify") as bar:
                guess = self._counts(x, n0, k, batch_size, generator, bar).argmax(dim=1)
                counts = self._counts(x, n, k, batch_size, generator, bar)
        top = counts.gather(1, guess[:, None])[:, 0]
        p_lower = clopper_pearson_lower(top, n, alpha)
        abstained = p_lower < 0.5
        radius = self.sigma * _normal_ppf(p_lower.clamp(min=0.5))
        radius = torch.where(abstained, torch.zeros_like(radius), radius)
        prediction = torch.where(abstained, torch.full_like(guess, ABSTAIN), guess)
        return SmoothingCertificate(prediction, radius, p_lower, counts, abstained, self.sigma,
                                    alpha, n0, n)

    # -- steps ---------------------------------------------------------------------------

    def _counts(self, x: Tensor, num: int, k: int, batch_size: int,
                generator: torch.Generator | None, bar: Any) -> Tensor:
        """(N, K) int64 votes (on the CPU) of ``num`` noisy copies of each input, drawn and
        classified ``batch_size`` copies at a time (copies of several inputs may share a
        batch, so small ``num`` stays efficient)."""
        total = x.shape[0] * num
        counts = torch.zeros(x.shape[0] * k, dtype=torch.int64, device=x.device)
        for start in range(0, total, batch_size):
            owner = torch.arange(start, min(start + batch_size, total), device=x.device) // num
            batch = x[owner]
            noise = torch.randn(batch.shape, generator=generator, device=x.device,
                                dtype=x.dtype)
            votes = self.model(batch + self.sigma * noise).argmax(dim=1)
            counts.scatter_add_(0, owner * k + votes, torch.ones_like(votes))
            bar.update(len(owner))
        return counts.view(x.shape[0], k).cpu()

    @staticmethod
    def _check(n: int, alpha: float, batch_size: int, method: str) -> tuple[int, float, int]:
        owner = f"Smoothed.{method}"
        return (check_int(n, "n", owner, low=1),
                check_float(alpha, "alpha", owner, low=0.0, high=1.0, low_open=True,
                            high_open=True),
                check_int(batch_size, "batch_size", owner, low=1))

    @staticmethod
    def _warn_small_n(n: int, alpha: float, smallest: int, method: str, what: str) -> None:
        if n < smallest:
            warnings.warn(
                f"Smoothed.{method}: with n={n} samples at alpha={alpha:g} the smoothed "
                f"classifier can never {what} (every sample abstains); the smallest n that "
                f"could is {smallest}.", UserWarning, stacklevel=3)

    def _check_input(self, x: Tensor, generator: torch.Generator | None) -> int:
        """Validate x and the generator; return the number of classes K (one clean forward)."""
        if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2:
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) \
                else type(x).__name__
            raise InvalidInputError(
                f"'x' must be a floating-point tensor (N, ...) with a batch dimension. Got "
                f"{got} instead.")
        if x.shape[0] == 0 or not bool(torch.isfinite(x).all()):
            raise InvalidInputError(
                f"'x' must hold at least one sample and only finite values. Got shape "
                f"{tuple(x.shape)} with {int((~torch.isfinite(x)).sum())} non-finite values.")
        dev = model_device(self.model)
        if dev is not None and dev != x.device:
            raise InvalidInputError(
                f"'x' is on {x.device} but the model is on {dev}: move the data to the model's "
                "device (advrobust never moves your model).")
        if generator is not None and generator.device.type != x.device.type:
            raise InvalidInputError(
                f"'generator' is on {generator.device} but 'x' is on {x.device}: noise is drawn "
                "on the inputs' device, pass torch.Generator(device=x.device).")
        out = self.model(x[:64])
        if out.dim() != 2 or out.shape[0] != min(64, x.shape[0]):
            raise InvalidInputError(
                f"The model must map x of shape {tuple(x[:64].shape)} to outputs (N, classes); "
                f"got {tuple(out.shape)}.")
        if looks_like_probabilities(out):
            warnings.warn(
                "Smoothed: the model's outputs look like probabilities (non-negative rows "
                "summing to 1), not logits. Smoothing only uses the arg-max, so the certificate "
                "is unaffected, but noise training (consistency) and attacks need logits: "
                "remove the final softmax.", UserWarning, stacklevel=3)
        return int(out.shape[1])


def _normal_ppf(p: Tensor) -> Tensor:
    from scipy.stats import norm

    return torch.from_numpy(norm.ppf(p.numpy()))


class _NoBar:
    def update(self, _: int) -> None:
        return None

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, leave=False)
