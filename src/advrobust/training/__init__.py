"""Training: the loop (``fit``) and the objectives (defenses) that plug into it.

Objectives: :class:`Standard`; adversarial training :class:`AdversarialPGD` (Madry et al.
2018), :class:`FastFGSM` (Wong, Rice & Kolter 2020), :class:`TRADES` (Zhang et al. 2019);
input-gradient regularisers :class:`GradientNormPenalty` and :class:`LipschitzPenalty` (Finlay &
Oberman 2019); certified training :class:`IBPTraining` (Gowal et al. 2018) and :class:`CROWNIBP`
(Zhang et al. 2020); :class:`NoiseAugmentation` (Cohen et al. 2019), with
:class:`ConsistencyRegularization` (Jeong & Shin 2020) and :class:`SmoothAdv` (Salman et al.
2019) for randomized smoothing; and the dictionary defenses
:class:`DictionaryAdversarialTraining` / :class:`DictionaryNoiseTraining`.
:func:`build_objective` turns a name of :data:`DEFENSES` into one (the CLI's ``--defense``).
"""

from advrobust.training.adversarial import TRADES, AdversarialPGD, FastFGSM
from advrobust.training.certified import CROWNIBP, IBPTraining
from advrobust.training.defenses import DEFENSES, build_objective, describe_objective
from advrobust.training.dictionary import (
    DictionaryAdversarialTraining,
    DictionaryNoiseTraining,
)
from advrobust.training.history import EpochStats, History
from advrobust.training.loop import fit
from advrobust.training.noise import NoiseAugmentation
from advrobust.training.objective import Objective
from advrobust.training.objectives import Standard
from advrobust.training.ramps import EpsSchedule, Ramp
from advrobust.training.regularizers import (
    Composite,
    GradientNormPenalty,
    LipschitzPenalty,
    input_gradient_norm,
)
from advrobust.training.schedule import course_schedule, lr_at_epoch
from advrobust.training.smoothing import ConsistencyRegularization, SmoothAdv

__all__ = [
    "CROWNIBP",
    "DEFENSES",
    "TRADES",
    "AdversarialPGD",
    "Composite",
    "ConsistencyRegularization",
    "DictionaryAdversarialTraining",
    "DictionaryNoiseTraining",
    "EpochStats",
    "EpsSchedule",
    "FastFGSM",
    "GradientNormPenalty",
    "History",
    "IBPTraining",
    "LipschitzPenalty",
    "NoiseAugmentation",
    "Objective",
    "Ramp",
    "SmoothAdv",
    "Standard",
    "build_objective",
    "course_schedule",
    "describe_objective",
    "fit",
    "input_gradient_norm",
    "lr_at_epoch",
]
