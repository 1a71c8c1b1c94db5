"""Reading and writing the IDX format of MNIST, gzipped or not.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``0x00 0x00 <type>
<ndim>``, then ``ndim`` big-endian uint32 dimension sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from advrobust.errors import DataFormatError

__all__ = ["read_idx", "write_idx"]

# IDX type byte -> numpy dtype (big-endian as the format stores them).
_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, gunzipped when it starts with the gzip magic (any file name).

    Raises:
        DataFormatError: If the gzip stream is corrupt or truncated.
    """
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(f"{path}: corrupt or truncated gzip data ({err}).") from err


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a numpy array.

    Args:
        path: The file.
        ndim: If given, the number of dimensions the file must have (3 for images, 1 for labels).

    Returns:
        The array, in native byte order, with the shape the header declares.

    Raises:
        DataFormatError: Bad magic number, unknown type code, wrong number of dimensions, or a
            size that disagrees with the header (truncated file or trailing bytes). The message
            names the file.
    """
    path = Path(path)
    data = read_bytes(path)
    dtype, shape = _parse_header(path, data, ndim)
    offset = 4 + 4 * len(shape)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataFormatError(
            f"{path}: file {what}: the header declares shape {shape} ({expected} bytes with the "
            f"header) but the data holds {len(data)} bytes.")
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _parse_header(path: Path, data: bytes, ndim: int | None) -> tuple[np.dtype, tuple[int, ...]]:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise DataFormatError(
            f"{path}: bad IDX magic number {data[:4].hex() or '(empty file)'}: expected "
            "00 00 <type in 08/09/0b/0c/0d/0e> <ndim>. Is this an IDX file?")
    found = data[3]
    if ndim is not None and found != ndim:
        raise DataFormatError(
            f"{path}: wrong number of dimensions: expected {ndim}, the header says {found}.")
    if len(data) < 4 + 4 * found:
        raise DataFormatError(f"{path}: file truncated inside the header ({len(data)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=found, offset=4))
    return _TYPES[data[2]], shape


def write_idx(path: str | os.PathLike[str], array: np.ndarray,
              compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file.

    Args:
        path: Destination file.
        array: Array whose dtype is one of uint8, int8, int16, int32, float32, float64, with
            1 to 255 dimensions.
        compress: Gzip the file; ``None`` gzips exactly when the name ends in ``.gz``.

    Returns:
        The path written.

    Raises:
        DataFormatError: If the array's dtype or number of dimensions has no IDX encoding.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or not 1 <= array.ndim <= 255:
        raise DataFormatError(
            f"Cannot write {path}: IDX stores 1-255 dimensions of uint8, int8, int16, int32, "
            f"float32 or float64. Got dtype {array.dtype} with {array.ndim} dimensions.")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes()
    payload = header + body
    if compress if compress is not None else path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    path.write_bytes(payload)
    return path
