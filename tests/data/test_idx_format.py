"""The IDX reader / writer: round trips and every malformed-file error."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from advrobust.data import read_idx, write_idx
from advrobust.errors import DataFormatError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
           dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
           elements={"allow_nan": False} if np.dtype(dt).kind == "f" else None)),
       gz=st.booleans())
def test_round_trip(tmp_path: Path, array: np.ndarray, gz: bool) -> None:
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_header_is_big_endian_idx(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.arange(6, dtype=np.int32).reshape(2, 3))
    raw = path.read_bytes()
    assert raw[:12] == bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 3])
    assert raw[12:16] == (0).to_bytes(4, "big") and raw[-4:] == (5).to_bytes(4, "big")


def test_gzip_is_detected_from_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "plain.gz", array, compress=False)
    write_idx(tmp_path / "zipped", array, compress=True)
    for name in ("plain.gz", "zipped"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def _idx_bytes(array: np.ndarray, tmp_path: Path) -> bytes:
    return write_idx(tmp_path / "src.idx", array, compress=False).read_bytes()


@pytest.mark.parametrize(("mutate", "fragment"), [
    (lambda b: b"\x08\x03" + b[2:], "bad IDX magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad IDX magic number"),
    (lambda b: b"", "(empty file)"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b[:10], "truncated inside the header"),
    (lambda b: b + b"\x00", "trailing bytes"),
])
def test_malformed_files_raise_naming_the_file(tmp_path: Path, mutate: Callable[[bytes], bytes],
                                               fragment: str) -> None:
    raw = mutate(_idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8), tmp_path))
    for path, payload in ((tmp_path / "bad.idx", raw), (tmp_path / "bad.gz", gzip.compress(raw))):
        path.write_bytes(payload)
        with pytest.raises(DataFormatError) as info:
            read_idx(path)
        assert fragment in str(info.value) and str(path) in str(info.value)


def test_truncation_message_gives_sizes(tmp_path: Path) -> None:
    path = tmp_path / "short.idx"
    path.write_bytes(_idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8), tmp_path)[:-5])
    with pytest.raises(DataFormatError, match=r"shape \(2, 3, 3\) \(34 bytes .*holds 29 bytes"):
        read_idx(path)


def test_wrong_number_of_dimensions(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.idx", np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(DataFormatError, match="expected 1, the header says 2"):
        read_idx(path, ndim=1)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(4000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_write_rejects_types_idx_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(DataFormatError, match="0 dimensions"):
        write_idx(tmp_path / "x", np.zeros((), dtype=np.uint8))
