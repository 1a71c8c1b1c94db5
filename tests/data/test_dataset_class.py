"""The Dataset container: validation, take, subset, batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advrobust.data import Dataset
from advrobust.errors import InvalidInputError, InvalidParameterError

CLASSES = ("a", "b", "c")


def make(n: int = 10, **overrides: object) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    fields: dict[str, object] = dict(
        x=torch.rand(n, 1, 4, 4, generator=gen), y=torch.arange(n) % 3, classes=CLASSES,
        name="toy", split="test", provenance="made in a test")
    fields.update(overrides)
    return Dataset(**fields)  # type: ignore[arg-type]


def test_properties_and_repr() -> None:
    ds = make(7)
    assert len(ds) == 7 and ds.input_shape == (1, 4, 4) and ds.num_classes == 3
    assert "n=7" in repr(ds) and "toy" in repr(ds) and "tensor" not in repr(ds)


def test_is_frozen() -> None:
    with pytest.raises(AttributeError):
        make().name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"x": torch.zeros(10, 1, 4, 4, dtype=torch.uint8)}, "float32"),
    ({"x": torch.zeros(10, 16)}, "(N, C, H, W)"),
    ({"x": torch.full((10, 1, 4, 4), 1.5)}, "[0, 1]"),
    ({"x": torch.full((10, 1, 4, 4), float("nan"))}, "[0, 1]"),
    ({"x": [[0.0]]}, "torch.Tensor"),
    ({"y": torch.zeros(10, dtype=torch.int32)}, "int64"),
    ({"y": torch.zeros(9, dtype=torch.int64)}, "(10,)"),
    ({"y": torch.full((10,), 3)}, "[0, 2]"),
    ({"y": torch.full((10,), -1)}, "[0, 2]"),
    ({"classes": ["a", "b", "c"]}, "tuple of str"),
    ({"classes": ()}, "tuple of str"),
    ({"name": None}, "'name'"),
])
def test_post_init_rejects_bad_fields(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        make(**overrides)
    assert fragment in str(info.value)


def test_empty_dataset_rejected() -> None:
    with pytest.raises(InvalidInputError, match="at least one sample"):
        make(0)


def test_take_keeps_first_samples_and_notes_it() -> None:
    ds = make(10)
    head = ds.take(4)
    assert torch.equal(head.x, ds.x[:4]) and torch.equal(head.y, ds.y[:4])
    assert head.classes == ds.classes and head.split == ds.split
    assert head.provenance.startswith(ds.provenance) and "first 4 of 10" in head.provenance
    assert len(ds.take(10)) == 10


@pytest.mark.parametrize("n", [0, -1, 11])
def test_take_out_of_range_is_an_error(n: int) -> None:
    with pytest.raises(InvalidParameterError, match=r"'n' parameter of Dataset.take .*\[1, 10\]"):
        make(10).take(n)


def test_subset_follows_given_order() -> None:
    ds = make(10)
    sub = ds.subset([3, 0, -1, 3])
    assert torch.equal(sub.x, ds.x[[3, 0, 9, 3]]) and torch.equal(sub.y, ds.y[[3, 0, 9, 3]])
    assert torch.equal(ds.subset(torch.tensor([2, 5])).y, ds.y[[2, 5]])
    assert "subset of 4" in sub.provenance


@pytest.mark.parametrize(("indices", "fragment"), [
    ([0, 10], "[-10, 9]"), ([-11], "[-10, 9]"), ([0.5], "1-D sequence of ints"),
    ([True, False], "1-D sequence of ints"), ([], "non-empty"), ([[0, 1]], "1-D"),
    ("ab", "1-D sequence of ints"),
])
def test_subset_rejects_bad_indices(indices: object, fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        make(10).subset(indices)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 23), batch_size=st.integers(1, 30))
def test_batches_cover_dataset_in_order(n: int, batch_size: int) -> None:
    ds = make(n)
    parts = list(ds.batches(batch_size))
    assert [len(y) for _, y in parts[:-1]] == [batch_size] * (len(parts) - 1)
    assert 1 <= len(parts[-1][1]) <= batch_size
    assert torch.equal(torch.cat([x for x, _ in parts]), ds.x)
    assert torch.equal(torch.cat([y for _, y in parts]), ds.y)


def test_shuffled_batches_are_a_seeded_permutation() -> None:
    ds = make(20, y=torch.arange(20) % 3, x=torch.linspace(0, 1, 20).view(20, 1, 1, 1))
    order = [torch.cat([x.flatten() for x, _ in
                        ds.batches(6, shuffle=True, generator=torch.Generator().manual_seed(s))])
             for s in (1, 1, 2)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    assert torch.equal(order[0].sort().values, ds.x.flatten())
    pairs = {(float(x), int(y)) for xb, yb in ds.batches(6, shuffle=True)
             for x, y in zip(xb.flatten(), yb, strict=True)}
    assert pairs == {(float(x), int(y)) for x, y in zip(ds.x.flatten(), ds.y, strict=True)}


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"batch_size": 0}, "'batch_size'"), ({"batch_size": 2.5}, "'batch_size'"),
    ({"batch_size": 2, "generator": 3}, "torch.Generator"),
])
def test_batches_reject_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        make().batches(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)
