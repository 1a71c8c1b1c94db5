"""Dictionary-based defenses: adversarial examples x + D v and Laplace noise x + D z."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.attacks.dictionary import (
    Dictionary,
    project_atoms,
    sample_laplace,
    save_dictionary,
)
from advrobust.errors import InvalidInputError, InvalidParameterError
from advrobust.training import fit
from advrobust.training.dictionary import DictionaryAdversarialTraining, DictionaryNoiseTraining

Split = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: far faster on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dictionary() -> Dictionary:
    gen = torch.Generator().manual_seed(0)
    atoms = project_atoms(torch.randn((64, 4), generator=gen) * 0.2)
    codes = sample_laplace((4, 50), 0.8, generator=gen) * (torch.rand(4, 50, generator=gen) > .5)
    return Dictionary(atoms=atoms, input_shape=(1, 8, 8), codes=codes, lambda1=0.05,
                      lambda2=0.001, loss="ce", dataset="digits")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_noise_scale_is_the_laplace_mle_of_the_codes(dictionary: Dictionary,
                                                     digits: Split) -> None:
    x = digits[0][0][:32]
    objective = DictionaryNoiseTraining(dictionary=dictionary, seed=3)
    assert dictionary.codes is not None
    assert objective.fitted_scale == pytest.approx(float(dictionary.codes.abs().mean()))
    noisy = objective.noisy_examples(x)
    assert noisy.shape == x.shape and float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    assert not torch.equal(noisy, x)
    again = DictionaryNoiseTraining(dictionary=dictionary, seed=3).noisy_examples(x)
    assert torch.equal(noisy, again)
    # away from the box's faces the noise D z lies in the span of the atoms
    given = DictionaryNoiseTraining(dictionary=dictionary, scale=0.05, seed=0)
    assert given.fitted_scale == 0.05
    mid = torch.full((8, 1, 8, 8), 0.5)
    delta = (given.noisy_examples(mid) - mid).reshape(8, 64).T
    coef = torch.linalg.lstsq(dictionary.atoms, delta).solution
    torch.testing.assert_close(dictionary.atoms @ coef, delta, atol=1e-5, rtol=1e-4)
    assert float(delta.abs().max()) > 0


def test_adversarial_examples_raise_the_loss_and_stay_in_the_box(dictionary: Dictionary,
                                                                 digits: Split) -> None:
    (x, y), _ = digits
    x, y = x[:24], y[:24]
    model = _model().train()
    objective = DictionaryAdversarialTraining(dictionary=dictionary, steps=3, step_size=2.0)
    x_adv = objective.adversarial_examples(model, x, y)
    assert model.training, "the model's mode was not restored"
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    model.eval()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    # the coding objective -CE + penalties decreases monotonically from v = 0
    assert bool((adv >= clean - 1e-5).all()) and bool((adv > clean).any())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["noise", "adversarial"])
def test_objectives_train_with_fit(dictionary: Dictionary, digits: Split, tmp_path: Path,
                                   kind: str) -> None:
    (x, y), _ = digits
    path = save_dictionary(tmp_path / "d.npz", dictionary)
    objective = (DictionaryNoiseTraining(dictionary=str(path), seed=0) if kind == "noise"
                 else DictionaryAdversarialTraining(dictionary=path, steps=2))
    model = _model()
    loss = objective(model, x[:16], y[:16], 0.0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    history = fit(model, (x[:200], y[:200]), objective=objective, epochs=1, batch_size=50,
                  lr=0.1, progress=False)
    assert len(history.epochs) == 1


def test_bad_input(dictionary: Dictionary) -> None:
    no_codes = Dictionary(atoms=dictionary.atoms, input_shape=(1, 8, 8))
    with pytest.raises(InvalidInputError, match="no codes"):
        DictionaryNoiseTraining(dictionary=no_codes)
    with pytest.raises(InvalidParameterError, match="'scale' parameter"):
        DictionaryNoiseTraining(dictionary=dictionary, scale=-1.0)
    with pytest.raises(InvalidParameterError, match="'dictionary' parameter"):
        DictionaryAdversarialTraining(dictionary=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="'augmented_weight'"):
        DictionaryAdversarialTraining(dictionary=dictionary, augmented_weight=2.0)
    with pytest.raises(InvalidInputError, match=r"shape \(1, 8, 8\)"):
        DictionaryNoiseTraining(dictionary=dictionary).prepare(_model(), (1, 28, 28))


@pytest.mark.parametrize("cls", [DictionaryNoiseTraining, DictionaryAdversarialTraining])
def test_dictionary_from_another_dataset_is_refused(dictionary: Dictionary, tmp_path: Path,
                                                    cls: type) -> None:
    path = save_dictionary(tmp_path / "d.npz", dictionary)  # recorded dataset: digits
    for source in (dictionary, str(path)):
        with pytest.raises(InvalidInputError, match="learned on 'digits', not 'mnist'"):
            cls(dictionary=source, dataset="mnist")
        assert cls(dictionary=source, dataset="digits").dataset == "digits"
    with pytest.raises(InvalidParameterError, match="'dataset' parameter"):
        cls(dictionary=dictionary, dataset=1)
