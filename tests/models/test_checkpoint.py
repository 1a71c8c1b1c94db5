"""Checkpoints: exact round trips; corrupt, incomplete and malicious files refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust.core import Norm
from advrobust.errors import CheckpointError, InvalidParameterError
from advrobust.models import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MODELS,
    build_model,
    load_checkpoint,
    save_checkpoint,
    to_primitive,
)

KWARGS = {"input_shape": (1, 8, 8), "num_classes": 10, "normalize": (0.5, 0.25)}


@pytest.mark.parametrize("arch", MODELS)
def test_round_trip_gives_identical_outputs(tmp_path: Path, arch: str) -> None:
    kwargs = KWARGS | {"input_shape": (3, 16, 16), "normalize": ([0.5, 0.4, 0.3], [0.2] * 3)}
    model = build_model(arch, seed=0, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # "trained" weights, different from a fresh build
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, arch=arch, arch_kwargs=kwargs,
                           metadata={"dataset": "digits", "clean_accuracy": 0.9,
                                     "objective": {"name": "Standard", "params": {}}})
    loaded = load_checkpoint(path)
    x = torch.rand(5, 3, 16, 16)
    assert torch.equal(loaded.model(x), model(x))
    assert not loaded.model.training
    assert loaded.arch == arch
    assert loaded.arch_kwargs == {"input_shape": [3, 16, 16], "num_classes": 10,
                                  "normalize": [[0.5, 0.4, 0.3], [0.2, 0.2, 0.2]]}
    assert loaded.metadata["clean_accuracy"] == 0.9
    assert loaded.metadata["objective"] == {"name": "Standard", "params": {}}
    assert {"library_version", "saved_at"} <= set(loaded.metadata)
    assert loaded.num_parameters == sum(p.numel() for p in model.parameters())
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))  # atomic write left nothing


def test_file_is_a_plain_dict_of_primitives_and_tensors(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", build_model("small", (1, 8, 8)), arch="small",
                           arch_kwargs={"input_shape": (1, 8, 8)})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == CHECKPOINT_VERSION
    assert set(raw) == {"format", "version", "arch", "arch_kwargs", "state_dict", "metadata"}


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


class _OpenFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payloads_are_refused_and_never_run(tmp_path: Path) -> None:
    marker_a, marker_b = tmp_path / "ran_system", tmp_path / "ran_open"
    raw_pickle = tmp_path / "raw.pt"
    raw_pickle.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": _SystemCall(marker_a)},
                                        protocol=2))
    zipped = tmp_path / "zip.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "mlp2", "x": _OpenFile(marker_b)}, zipped)
    for path, name in ((raw_pickle, "posix.system|nt.system"), (zipped, "io.open|builtins.open")):
        with pytest.raises(CheckpointError, match=f"Refused.*({name}).*can run code"):
            load_checkpoint(path)
    raw4 = tmp_path / "raw4.pt"
    raw4.write_bytes(pickle.dumps([_SystemCall(marker_a)], protocol=4))
    with pytest.raises(CheckpointError, match="not a weights-only torch file"):
        load_checkpoint(raw4)
    assert not marker_a.exists() and not marker_b.exists()
    # The payload is live: an unsafe load does run it (so the test above is meaningful).
    torch.load(zipped, weights_only=False)
    assert marker_b.exists()


def _valid_payload() -> dict:
    model = build_model("small", (1, 8, 8), seed=0)
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": "small",
            "arch_kwargs": {"input_shape": [1, 8, 8], "num_classes": 10, "normalize": None},
            "state_dict": model.state_dict(), "metadata": {}}


@pytest.mark.parametrize(("change", "match"), [
    (lambda p: p.pop("state_dict"), "missing the keys \\['state_dict'\\]"),
    (lambda p: p.update(format="other-tool"), "format tag 'other-tool'"),
    (lambda p: p.update(version=CHECKPOINT_VERSION + 1), "format version"),
    (lambda p: p.update(arch="resnet"), "cannot rebuild architecture 'resnet'"),
    (lambda p: p.update(arch_kwargs={"input_shape": [1, 8, 8], "depth": 3}), "cannot rebuild"),
    (lambda p: p.update(arch="mlp2"), "do not fit architecture 'mlp2'"),
    (lambda p: p.update(arch_kwargs={"input_shape": [1, 28, 28]}), "shape mismatches"),
    (lambda p: p["state_dict"].pop("1.weight"), "Missing: \\['1.weight'\\]"),
    (lambda p: p.update(metadata=[1, 2]), "'metadata' must be a dict"),
])
def test_incomplete_or_inconsistent_dicts_are_refused(tmp_path: Path, change, match: str) -> None:
    payload = _valid_payload()
    change(payload)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize(("content", "match"), [
    (b"", "empty"),
    (b"\x00\x01garbage bytes that are not a torch file" * 10, "corrupt|not a weights-only"),
    (None, "does not exist"),
])
def test_garbage_empty_and_missing_files_are_refused(tmp_path: Path, content: bytes | None,
                                                     match: str) -> None:
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_and_non_dict_files_are_refused(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "m.pt", build_model("small", (1, 8, 8)), arch="small",
                           arch_kwargs={"input_shape": (1, 8, 8)})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_save_refuses_what_would_not_load(tmp_path: Path) -> None:
    model = build_model("mlp2", (1, 8, 8))
    with pytest.raises(CheckpointError, match="do not fit architecture 'cnn'"):
        save_checkpoint(tmp_path / "a.pt", model, arch="cnn",
                        arch_kwargs={"input_shape": (1, 8, 8)})
    with pytest.raises(InvalidParameterError, match="metadata\\['path'\\]"):
        save_checkpoint(tmp_path / "b.pt", model, arch="mlp2",
                        arch_kwargs={"input_shape": (1, 8, 8)}, metadata={"path": tmp_path})
    with pytest.raises(InvalidParameterError, match="arch_kwargs"):
        save_checkpoint(tmp_path / "c.pt", model, arch="mlp2", arch_kwargs={"shape": (1, 8, 8)})
    assert not list(tmp_path.iterdir())


def test_bad_map_location_is_a_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="map_location"):
        load_checkpoint(tmp_path / "m.pt", map_location="not-a-device")


def test_metadata_must_be_exact_primitives_and_to_primitive_converts(tmp_path: Path) -> None:
    model = build_model("small", (1, 8, 8))
    odd = {"norm": Norm.LINF, "acc": np.float64(0.5), "n": torch.tensor(3), "path": tmp_path,
           "inf": float("inf"), "nested": ({"k": np.int64(2)},), "obj": object}
    for key in ("norm", "acc", "path", "nested", "obj"):  # tensors and inf floats load fine
        with pytest.raises(InvalidParameterError, match=f"metadata\\['{key}'\\]"):
            save_checkpoint(tmp_path / "m.pt", model, arch="small",
                            arch_kwargs={"input_shape": (1, 8, 8)}, metadata={key: odd[key]})
    converted = to_primitive(odd)
    assert converted == {"norm": "linf", "acc": 0.5, "n": 3, "path": str(tmp_path),
                         "inf": "inf", "nested": [{"k": 2}], "obj": repr(object)}
    path = save_checkpoint(tmp_path / "m.pt", model, arch="small",
                           arch_kwargs={"input_shape": (1, 8, 8)}, metadata=converted)
    assert load_checkpoint(path).metadata["norm"] == "linf"
    path = save_checkpoint(tmp_path / "m.pt", model, arch="small",
                           arch_kwargs={"input_shape": (1, 8, 8)},
                           metadata={"n": torch.tensor([1, 2]), "inf": float("inf")})
    meta = load_checkpoint(path).metadata
    assert torch.equal(meta["n"], torch.tensor([1, 2])) and meta["inf"] == float("inf")
