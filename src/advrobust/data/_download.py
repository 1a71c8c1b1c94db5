"""Downloading the four MNIST files, verified against their published checksums."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from advrobust.core._atomic import default_file_mode
from advrobust.core._validation import check_bool
from advrobust.errors import DataFormatError, DatasetNotFoundError, InvalidParameterError

__all__ = ["MNIST_MD5", "MNIST_URL", "download_mnist"]

logger = logging.getLogger(__name__)

# torchvision's mirror of the original files (yann.lecun.com no longer serves them reliably).
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# md5 of the original gzipped files, as published in torchvision's MNIST resource list; the three
# files besides train-images were also re-checked against byte-exact copies.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_CHUNK = 1 << 20


def download_mnist(root: str | os.PathLike[str], base_url: str = MNIST_URL, force: bool = False,
                   checksums: Mapping[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the four gzipped MNIST IDX files into ``root`` and verify their md5 checksums.

    Each file is fetched with urllib into a temporary file in ``root``, hashed, and renamed into
    place only when its md5 matches, so an interrupted or corrupt download never leaves a file
    under the final name. Files already present are verified instead of fetched again.

    Args:
        root: Destination folder (created if needed); afterwards
            ``load_dataset("mnist", root=root)`` reads it.
        base_url: Folder URL the four file names are appended to (``file://`` URLs work too).
        force: Download again even when a verified file is already present.
        checksums: File name -> md5 hex digest, overriding ``MNIST_MD5`` (for mirrors and tests).
        timeout: Seconds to wait on the network per request.

    Returns:
        The folder holding the files, as a Path.

    Raises:
        DataFormatError: If a downloaded file's checksum differs (the file is deleted) or a file
            already present fails verification (it is kept; pass ``force=True`` to replace it).
        DatasetNotFoundError: If a URL cannot be fetched.
        InvalidParameterError: If an argument has the wrong type.
    """
    force = check_bool(force, "force", "download_mnist")
    if not isinstance(base_url, str) or not base_url:
        raise InvalidParameterError("The 'base_url' parameter of download_mnist must be a "
                                    f"non-empty str. Got {base_url!r} instead.")
    expected = _checksums(checksums)
    folder = Path(root).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_MD5:
        target = folder / name
        if target.is_file() and not force:
            _verify_existing(target, expected[name])
            continue
        _fetch(base_url.rstrip("/") + "/" + name, target, expected[name], timeout)
    return folder


def _checksums(override: Mapping[str, str] | None) -> dict[str, str]:
    extra = dict(override) if override is not None else {}
    unknown = sorted(set(extra) - set(MNIST_MD5))
    if unknown:
        raise InvalidParameterError(
            f"The 'checksums' parameter of download_mnist must map names among "
            f"{sorted(MNIST_MD5)} to md5 digests. Got unknown names {unknown} instead.")
    return {**MNIST_MD5, **extra}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_existing(path: Path, md5: str) -> None:
    found = _md5(path)
    if found != md5.lower():
        raise DataFormatError(
            f"{path} is already present but its md5 is {found}, not the published {md5}. "
            "Remove it or call download_mnist(..., force=True) to fetch it again.")
    logger.info("%s already present and verified", path)


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    logger.info("downloading %s", url)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5.lower():
            raise DataFormatError(
                f"Downloaded {url} but its md5 is {digest.hexdigest()}, not the expected {md5}: "
                f"the file was deleted and {target} not written. The mirror may be corrupt; try "
                "another base_url.")
        os.chmod(tmp, default_file_mode())  # mkstemp made it 0600; a download follows the umask
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        raise DatasetNotFoundError(f"Could not download {url}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
