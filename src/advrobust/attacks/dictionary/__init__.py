"""Adversarial dictionary learning (ADiL / SADiL): perturbations ``D v_i`` with a dictionary D
of M atoms shared by the data set and a sparse code ``v_i`` per input.

Between per-input attacks (PGD, DeepFool, C&W) and one universal perturbation: the atoms are
universal and interpretable, the codes specific. :class:`ADiL` (full batch, line-search proximal
gradient) and :class:`SADiL` (stochastic, alternating) learn D on a data set;
:class:`DictionaryAttack` attacks unseen inputs with D fixed; :func:`evaluate_dictionary`
measures the fooling rate and rMSE; the defenses live in :mod:`advrobust.training.dictionary`.
"""

from advrobust.attacks.dictionary._dictionary import Dictionary, load_dictionary, save_dictionary
from advrobust.attacks.dictionary._prox import (
    fit_laplace_scale,
    project_atoms,
    sample_laplace,
    soft_threshold,
)
from advrobust.attacks.dictionary.adil import ADiL
from advrobust.attacks.dictionary.attack import DictionaryAttack
from advrobust.attacks.dictionary.coding import CodingResult, span_code, sparse_code
from advrobust.attacks.dictionary.evaluate import (
    DictionaryReport,
    apply_codes,
    code_inputs,
    evaluate_dictionary,
)
from advrobust.attacks.dictionary.objective import (
    AdversarialLoss,
    DictionaryObjective,
    adversarial_loss,
    resolve_target,
)
from advrobust.attacks.dictionary.plotting import plot_atoms, plot_dictionary_examples
from advrobust.attacks.dictionary.sadil import SADiL

__all__ = [
    "ADiL",
    "SADiL",
    "AdversarialLoss",
    "CodingResult",
    "Dictionary",
    "DictionaryAttack",
    "DictionaryObjective",
    "DictionaryReport",
    "adversarial_loss",
    "apply_codes",
    "code_inputs",
    "evaluate_dictionary",
    "fit_laplace_scale",
    "load_dictionary",
    "plot_atoms",
    "plot_dictionary_examples",
    "project_atoms",
    "resolve_target",
    "sample_laplace",
    "save_dictionary",
    "soft_threshold",
    "span_code",
    "sparse_code",
]
