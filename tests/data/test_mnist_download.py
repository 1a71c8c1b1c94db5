"""download_mnist against a file:// mirror the test serves itself."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from advrobust.data import MNIST_MD5, download_mnist, load_dataset
from advrobust.errors import DataFormatError, DatasetNotFoundError, InvalidParameterError

NAMES = sorted(MNIST_MD5)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path,
           write_mnist: Callable[..., tuple[np.ndarray, np.ndarray]]) -> tuple[str, dict[str, str]]:
    """A folder of four small gzipped IDX files; returns its file:// URL and their md5s."""
    folder = tmp_path / "mirror"
    write_mnist(folder, "train", n_images=4, seed=1)
    write_mnist(folder, "test", n_images=3, seed=2)
    return folder.as_uri(), {name: _md5(folder / name) for name in NAMES}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in NAMES)


def test_downloads_verifies_and_loads(tmp_path: Path, mirror: tuple[str, dict[str, str]]) -> None:
    url, sums = mirror
    dest = download_mnist(tmp_path / "dest", base_url=url, checksums=sums)
    assert dest == tmp_path / "dest" and _leftovers(dest) == []
    for name in NAMES:
        assert (dest / name).read_bytes() == (Path(url[len("file://"):]) / name).read_bytes()
    assert len(load_dataset("mnist", "train", root=dest)) == 4
    assert len(load_dataset("mnist", "test", root=dest)) == 3


def test_checksum_mismatch_deletes_the_download(tmp_path: Path,
                                               mirror: tuple[str, dict[str, str]]) -> None:
    url, sums = mirror
    bad = {**sums, "t10k-images-idx3-ubyte.gz": "0" * 32}
    with pytest.raises(DataFormatError) as info:
        download_mnist(tmp_path / "dest", base_url=url + "/", checksums=bad)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "0" * 32 in msg
    assert sums["t10k-images-idx3-ubyte.gz"] in msg and "deleted" in msg
    assert not (tmp_path / "dest" / "t10k-images-idx3-ubyte.gz").exists()
    assert not [n for n in _leftovers(tmp_path / "dest") if n.endswith(".part")]


def test_present_files_are_verified_not_refetched(tmp_path: Path,
                                                  mirror: tuple[str, dict[str, str]]) -> None:
    url, sums = mirror
    dest = download_mnist(tmp_path / "dest", base_url=url, checksums=sums)
    empty = (tmp_path / "empty").as_uri()
    download_mnist(dest, base_url=empty, checksums=sums)  # nothing fetched: would fail
    with pytest.raises(DatasetNotFoundError, match="Could not download file://.*empty"):
        download_mnist(dest, base_url=empty, checksums=sums, force=True)
    assert _leftovers(dest) == []
    corrupt = dest / "train-labels-idx1-ubyte.gz"
    corrupt.write_bytes(b"junk")
    with pytest.raises(DataFormatError, match="already present .*force=True"):
        download_mnist(dest, base_url=url, checksums=sums)
    assert corrupt.read_bytes() == b"junk"  # the user's file is kept
    download_mnist(dest, base_url=url, checksums=sums, force=True)
    assert _md5(corrupt) == sums["train-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"checksums": {"mnist.npz": "0"}}, "unknown names ['mnist.npz']"),
    ({"force": 1}, "'force' parameter of download_mnist must be a bool"),
    ({"base_url": ""}, "'base_url'"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        download_mnist(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_published_md5s_match_the_original_files(shared_data: Path) -> None:
    # Three of the four originals are here byte-exact; the train images are a prefix copy.
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "train-labels-idx1-ubyte.gz"):
        assert _md5(shared_data / "mnist" / name) == MNIST_MD5[name]
