"""Training base classifiers for randomized smoothing beyond plain noise augmentation.

- :class:`ConsistencyRegularization` (Jeong & Shin, NeurIPS 2020): cross-entropy under noise
  plus a term that makes the predictions on several noisy copies of one input agree.
- :class:`SmoothAdv` (Salman et al., NeurIPS 2019): noise training on adversarial examples of
  the *smoothed* soft classifier, found by l2 PGD on the noise-averaged softmax.

Plain Gaussian augmentation is :class:`~advrobust.training.noise.NoiseAugmentation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core._validation import check_float, check_int
from advrobust.training._defense_utils import GeneratorCache, attack_mode
from advrobust.training.objective import Objective

__all__ = ["ConsistencyRegularization", "SmoothAdv"]


def _noisy_copies(x: Tensor, m: int, sigma: float, gen: torch.Generator) -> Tensor:
    """(m * B, ...) copies ``x + sigma * N(0, I)``, copy-major (copy i is rows i*B:(i+1)*B)."""
    xr = x.repeat(m, *([1] * (x.dim() - 1)))
    return xr + sigma * torch.randn(xr.shape, generator=gen, device=x.device, dtype=x.dtype)


class ConsistencyRegularization(Objective):
    """Noise training with a consistency regulariser (Jeong & Shin, "Consistency
    regularization for certified robustness of smoothed classifiers", NeurIPS 2020).

    With ``m`` noisy copies ``x + delta_i`` of each input, softmax outputs ``p_i`` and their mean
    ``p_bar``, the loss is ``mean_i CE(f(x + delta_i), y) + lam * mean_i KL(p_bar || p_i)
    + eta * H(p_bar)``: the copies are pulled towards one confident prediction, which raises
    the smoothed classifier's top-class probability and hence its certified radius.

    Args:
        sigma: noise standard deviation, >= 0.
        m: noisy copies per input, >= 2 (the KL term is 0 with one copy).
        lam: weight of the consistency (KL) term, >= 0 (the paper uses 5-20).
        eta: weight of the entropy term, >= 0 (the paper uses 0.5).
        seed: seed of the noise (None: drawn from torch's default generator once).
    """

    def __init__(self, *, sigma: float, m: int = 2, lam: float = 5.0, eta: float = 0.5,
                 seed: int | None = None) -> None:
        owner = "ConsistencyRegularization"
        self.sigma = check_float(sigma, "sigma", owner, low=0.0)
        self.m = check_int(m, "m", owner, low=2)
        self.lam = check_float(lam, "lam", owner, low=0.0)
        self.eta = check_float(eta, "eta", owner, low=0.0)
        if seed is not None:
            check_int(seed, "seed", owner, low=0)
        self.seed = seed
        self._gens = GeneratorCache(seed)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        noisy = _noisy_copies(x, self.m, self.sigma, self._gens.get(x.device))
        logits = model(noisy)
        ce = F.cross_entropy(logits, y.repeat(self.m))
        log_p = F.log_softmax(logits, dim=1).view(self.m, x.shape[0], -1)
        p_bar = log_p.exp().mean(dim=0)
        log_p_bar = p_bar.clamp_min(1e-20).log()
        kl = (p_bar[None] * (log_p_bar[None] - log_p)).sum(dim=2).mean()
        entropy = -(p_bar * log_p_bar).sum(dim=1).mean()
        return ce + self.lam * kl + self.eta * entropy


class SmoothAdv(Objective):
    """Adversarial training of the smoothed classifier (Salman et al., "Provably robust deep
    learning via adversarially trained smoothed classifiers", NeurIPS 2019).

    ``m`` noise draws ``delta_i`` per input are fixed; ``steps`` of l2 PGD (normalised gradient
    steps of size ``2 eps / steps``, projected on the ball and the [0, 1] box) maximise
    ``-log mean_i softmax(f(x' + delta_i))_y`` (the loss of the soft smoothed classifier,
    SmoothAdv_PGD); the model is then trained on ``mean_i CE(f(x' + delta_i), y)``. ``eps``
    ramps linearly from 0 over the first ``warmup`` fraction of training.

    Args:
        sigma: noise standard deviation, >= 0.
        eps: l2 radius of the attack, >= 0.
        steps: PGD steps, >= 1.
        m: noise draws per input, >= 1.
        warmup: fraction of training over which eps ramps up, in [0, 1].
        seed: seed of the noise (None: drawn from torch's default generator once).
    """

    def __init__(self, *, sigma: float, eps: float = 1.0, steps: int = 2, m: int = 1,
                 warmup: float = 0.1, seed: int | None = None) -> None:
        owner = "SmoothAdv"
        self.sigma = check_float(sigma, "sigma", owner, low=0.0)
        self.eps = check_float(eps, "eps", owner, low=0.0)
        self.steps = check_int(steps, "steps", owner, low=1)
        self.m = check_int(m, "m", owner, low=1)
        self.warmup = check_float(warmup, "warmup", owner, low=0.0, high=1.0)
        if seed is not None:
            check_int(seed, "seed", owner, low=0)
        self.seed = seed
        self._gens = GeneratorCache(seed)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        eps = self.eps * (min(1.0, progress / self.warmup) if self.warmup > 0 else 1.0)
        noise = _noisy_copies(torch.zeros_like(x), self.m, self.sigma, self._gens.get(x.device))
        x_adv = self._attack(model, x, y, noise, eps) if eps > 0 else x
        logits = model(x_adv.repeat(self.m, *([1] * (x.dim() - 1))) + noise)
        return F.cross_entropy(logits, y.repeat(self.m))

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, noise: Tensor,
                eps: float) -> Tensor:
        step = 2.0 * eps / self.steps
        x_adv = x.detach().clone()
        with attack_mode(model):
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    logits = model(x_adv.repeat(self.m, *([1] * (x.dim() - 1))) + noise)
                    probs = F.softmax(logits, dim=1).view(self.m, x.shape[0], -1).mean(dim=0)
                    loss = -probs.gather(1, y[:, None]).clamp_min(1e-20).log().sum()
                    (grad,) = torch.autograd.grad(loss, x_adv)
                flat = grad.reshape(x.shape[0], -1)
                unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
                x_adv = x_adv.detach() + step * unit.view_as(x)
                delta = (x_adv - x).reshape(x.shape[0], -1)
                scale = (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                x_adv = (x + (delta * scale).view_as(x)).clamp(0.0, 1.0).detach()
        return x_adv
