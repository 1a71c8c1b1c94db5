"""Bounders the driver's policies need beyond the public ones in :mod:`advrobust.relax`."""

from __future__ import annotations

import torch
from torch import Tensor

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.network.ir import Network
from advrobust.relax.base import Bounder, Bounds

__all__ = ["CrownIBP"]


class CrownIBP(Bounder):
    """CROWN's final back-substitution on interval (IBP) intermediate bounds.

    Zhang et al. 2020, "Towards stable and efficient training of verifiably robust neural
    networks" (CROWN-IBP): far cheaper than full CROWN on convolutional models, whose
    intermediate passes dominate the cost; looser, so the certify policy tries it between IBP
    and full CROWN. Float64 with rounding allowances, like every bounder.
    """

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        from advrobust.relax.crown import crown_lower

        with torch.no_grad():
            return Bounds(crown_lower(network, x, threat, spec.C, spec.d, intermediate="ibp",
                                      rounding=True))
