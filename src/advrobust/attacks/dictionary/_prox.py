"""Proximal operators and the Laplace fit of adversarial dictionary learning.

The non-smooth part of the ADiL objective is ``lambda_1 sum_i ||v_i||_1 + indicator(||d_m||_2 <= 1
for every atom)``. It is separable between the dictionary D and the codes V, so its proximal map is
the projection of every atom onto the unit l2 ball (for D) and soft-thresholding (for V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from advrobust.errors import InvalidInputError

__all__ = ["fit_laplace_scale", "project_atoms", "sample_laplace", "soft_threshold"]


def project_atoms(atoms: Tensor) -> Tensor:
    """Euclidean projection of every column ``d_m`` of ``atoms`` (P, M) onto the unit l2 ball.

    Closed form: ``d_m / max(1, ||d_m||_2)``.
    """
    norms = atoms.norm(dim=0, keepdim=True)
    return atoms / norms.clamp_min(1.0)


def soft_threshold(v: Tensor, tau: float | Tensor) -> Tensor:
    """Proximal map of ``tau * ||.||_1``: ``sign(v) * max(|v| - tau, 0)`` elementwise."""
    return torch.sign(v) * (v.abs() - tau).clamp_min(0.0)


def fit_laplace_scale(codes: Tensor) -> float:
    """Maximum-likelihood scale ``b`` of a zero-mean Laplace law fitted to ``codes`` (any shape).

    For ``z ~ Laplace(0, b)`` the log-likelihood ``-n log(2b) - sum |z| / b`` peaks at
    ``b = mean |z|``.

    Raises:
        InvalidInputError: empty or non-finite codes, or codes that are all zero (no scale).
    """
    if codes.numel() == 0 or not bool(torch.isfinite(codes).all()):
        raise InvalidInputError("fit_laplace_scale needs a non-empty tensor of finite codes.")
    scale = float(codes.abs().mean())
    if scale <= 0:
        raise InvalidInputError(
            "fit_laplace_scale: every code is zero, so no Laplace scale can be fitted; learn the "
            "dictionary with a smaller lambda1 or give the scale explicitly.")
    return scale


def sample_laplace(shape: tuple[int, ...], scale: float, generator: torch.Generator | None = None,
                   device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Samples of ``Laplace(0, scale)`` by inversion: ``-b sign(u) log(1 - 2|u|)``,
    ``u ~ U(-1/2, 1/2)``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype) - 0.5
    tiny = torch.finfo(dtype).tiny
    return -scale * torch.sign(u) * torch.log((1 - 2 * u.abs()).clamp_min(tiny))
