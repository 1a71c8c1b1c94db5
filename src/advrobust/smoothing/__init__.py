"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): certificates for the *smoothed*
classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` of any network.

``Smoothed(model, sigma).certify(x, n0, n, alpha)`` returns a :class:`SmoothingCertificate`
(class, l2 radius, Clopper-Pearson bound, votes, abstentions) that holds with probability
``>= 1 - alpha`` over the noise. It is a statement about g, never a VERIFIED verdict of the
base model f.
"""

from advrobust.smoothing._stats import max_certifiable_radius, min_n_to_certify, min_n_to_predict
from advrobust.smoothing.result import (
    ABSTAIN,
    CERTIFIES,
    SmoothedPrediction,
    SmoothingCertificate,
)
from advrobust.smoothing.smoothed import Smoothed

__all__ = [
    "ABSTAIN",
    "CERTIFIES",
    "Smoothed",
    "SmoothedPrediction",
    "SmoothingCertificate",
    "max_certifiable_radius",
    "min_n_to_certify",
    "min_n_to_predict",
]
