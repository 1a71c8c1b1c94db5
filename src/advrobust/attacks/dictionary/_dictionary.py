"""A learned adversarial dictionary and its ``.npz`` file (no pickles), with metadata checks."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advrobust.attacks.dictionary._prox import fit_laplace_scale
from advrobust.core._npz import npz_reason
from advrobust.errors import DataFormatError, InvalidInputError, MissingFileError

__all__ = ["Dictionary", "load_dictionary", "save_dictionary"]

_FORMAT = "advrobust-dictionary-v1"
_ATOM_TOL = 1e-4


@dataclass(frozen=True)
class Dictionary:
    """A dictionary of adversarial atoms learned by ADiL / SADiL.

    Attributes:
        atoms: (P, M) float tensor, one atom per column, every ``||d_m||_2 <= 1``; P is the
            number of values of one input.
        input_shape: the shape of one input, e.g. (1, 28, 28); ``prod(input_shape) == P``.
        codes: (M, N) codes of the N training inputs (None when not kept).
        lambda1: l1 weight it was learned with.
        lambda2: energy weight it was learned with.
        loss: adversarial loss (``"ce"`` or ``"margin"``).
        kappa: confidence of the margin loss.
        lo: lower end of the input box of the training data.
        hi: upper end of the input box.
        method: ``"adil"`` or ``"sadil"``.
        history: objective after each iteration (ADiL) or epoch (SADiL); the first entry is the
            starting point.
        status: why learning stopped: ``"max_iter"``, ``"converged"``, ``"line_search"``
            (no step passed the sufficient-decrease test) or ``"nan"`` (a non-finite objective;
            the last good iterate is kept).
        dataset: name of the training data (checked when the file is loaded), or None.
        model: description of the attacked model (e.g. its checkpoint path), or None.
        seconds: learning time.

    Raises:
        InvalidInputError: inconsistent shapes or an atom outside the unit ball.
    """

    atoms: Tensor
    input_shape: tuple[int, ...]
    codes: Tensor | None = None
    lambda1: float = 0.0
    lambda2: float = 0.0
    loss: str = "margin"
    kappa: float = 0.0
    lo: float = 0.0
    hi: float = 1.0
    method: str = "adil"
    history: tuple[float, ...] = field(default_factory=tuple)
    status: str = "max_iter"
    dataset: str | None = None
    model: str | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        a = self.atoms
        if not torch.is_tensor(a) or a.dim() != 2 or a.shape[1] < 1:
            raise InvalidInputError(
                f"Dictionary atoms must be a (P, M) tensor with M >= 1. Got "
                f"{getattr(a, 'shape', type(a).__name__)} instead.")
        if math.prod(self.input_shape) != a.shape[0]:
            raise InvalidInputError(
                f"Dictionary atoms have {a.shape[0]} rows but input_shape {self.input_shape} has "
                f"{math.prod(self.input_shape)} values.")
        if float(a.norm(dim=0).max()) > 1 + _ATOM_TOL:
            raise InvalidInputError("Dictionary atoms must satisfy ||d_m||_2 <= 1.")
        if self.codes is not None and (self.codes.dim() != 2 or self.codes.shape[0] != a.shape[1]):
            raise InvalidInputError(
                f"Dictionary codes must be (M, N) with M = {a.shape[1]}. Got "
                f"{tuple(self.codes.shape)} instead.")

    @property
    def num_atoms(self) -> int:
        """M, the number of atoms."""
        return int(self.atoms.shape[1])

    def atom_images(self) -> Tensor:
        """The atoms as inputs, (M, *input_shape)."""
        return self.atoms.T.reshape((self.num_atoms, *self.input_shape))

    def perturbations(self, codes: Tensor) -> Tensor:
        """``D v_i`` for codes (M, N), shaped (N, *input_shape)."""
        return (self.atoms.to(codes) @ codes).T.reshape((codes.shape[1], *self.input_shape))

    def laplace_scale(self) -> float:
        """Maximum-likelihood Laplace scale ``b = mean |v|`` of the learned codes.

        Raises:
            InvalidInputError: no codes were kept, or they are all zero.
        """
        if self.codes is None:
            raise InvalidInputError("This dictionary holds no codes to fit a Laplace scale to.")
        return fit_laplace_scale(self.codes)

    def sparsity(self) -> float:
        """Fraction of zero entries in the learned codes (NaN without codes)."""
        return math.nan if self.codes is None else float((self.codes == 0).float().mean())

    def check_compatible(self, input_shape: tuple[int, ...] | None = None,
                         dataset: str | None = None, who: str = "Dictionary") -> None:
        """Raise when the dictionary was learned for other inputs or another dataset."""
        if input_shape is not None and tuple(input_shape) != self.input_shape:
            raise InvalidInputError(
                f"{who}: the dictionary was learned for inputs of shape {self.input_shape}; the "
                f"inputs have shape {tuple(input_shape)}.")
        if dataset is not None and self.dataset is not None and dataset != self.dataset:
            raise InvalidInputError(
                f"{who}: the dictionary was learned on {self.dataset!r}, not {dataset!r}.")


def save_dictionary(path: str | Path, dictionary: Dictionary) -> Path:
    """Write ``dictionary`` to an ``.npz`` file (no pickles) and return its path."""
    path = Path(path)
    d = dictionary
    arrays = {
        "format": np.asarray(_FORMAT), "atoms": d.atoms.detach().cpu().numpy(),
        "input_shape": np.asarray(d.input_shape, dtype=np.int64),
        "lambda1": np.asarray(d.lambda1), "lambda2": np.asarray(d.lambda2),
        "loss": np.asarray(d.loss), "kappa": np.asarray(d.kappa),
        "lo": np.asarray(d.lo), "hi": np.asarray(d.hi),
        "method": np.asarray(d.method), "history": np.asarray(d.history, dtype=np.float64),
        "status": np.asarray(d.status), "dataset": np.asarray(d.dataset or ""),
        "model": np.asarray(d.model or ""), "seconds": np.asarray(d.seconds)}
    if d.codes is not None:
        arrays["codes"] = d.codes.detach().cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return path


def load_dictionary(path: str | Path, *, input_shape: tuple[int, ...] | None = None,
                    dataset: str | None = None) -> Dictionary:
    """Read a file written by :func:`save_dictionary` and check it fits the caller's data.

    Args:
        path: the ``.npz`` file.
        input_shape: if given, the shape of one input the dictionary must have been learned for.
        dataset: if given, the dataset name it must have been learned on (when it recorded one).

    Raises:
        MissingFileError: no such file (a FileNotFoundError).
        DataFormatError: not a dictionary file (wrong format tag, missing keys, bad shapes).
        InvalidInputError: learned for another input shape or dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No dictionary file at {path}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or str(data["format"]) != _FORMAT:
                raise DataFormatError(f"{path} is not an {_FORMAT} file.")
            codes = (torch.from_numpy(np.array(data["codes"], dtype=np.float32))
                     if "codes" in data else None)
            result = Dictionary(
                atoms=torch.from_numpy(np.array(data["atoms"], dtype=np.float32)),
                input_shape=tuple(int(s) for s in data["input_shape"]), codes=codes,
                lambda1=float(data["lambda1"]), lambda2=float(data["lambda2"]),
                loss=str(data["loss"]), kappa=float(data["kappa"]), lo=float(data["lo"]),
                hi=float(data["hi"]),
                method=str(data["method"]), history=tuple(float(h) for h in data["history"]),
                status=str(data["status"]), dataset=str(data["dataset"]) or None,
                model=str(data["model"]) or None, seconds=float(data["seconds"]))
    except (KeyError, ValueError, OSError, InvalidInputError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path} is not a valid dictionary file: {npz_reason(exc)}") from exc
    result.check_compatible(input_shape, dataset, who=f"load_dictionary({path})")
    return result
