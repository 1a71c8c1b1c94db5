"""``load_dataset``: one entry point for every dataset name."""

from __future__ import annotations

import os

from advrobust.core._validation import check_choice
from advrobust.data._cifar import load_cifar10
from advrobust.data._dataset import Dataset
from advrobust.data._digits import load_digits_split
from advrobust.data._mnist import load_mnist

__all__ = ["DATASETS", "SPLITS", "load_dataset"]

DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")


def load_dataset(name: str, split: str = "test",
                 root: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a dataset split into memory, pixels scaled into [0, 1].

    ``"digits"``: scikit-learn's bundled 8x8 digits, (N, 1, 8, 8), 16 grey levels / 16, no files
    needed. A fixed split: ``train_test_split(test_size=0.25, stratify=y, random_state=0)``,
    1,347 train / 450 test images. ``root`` is ignored.

    ``"mnist"``: (N, 1, 28, 28), pixels / 255. Looked for in ``root``, ``root/mnist`` and
    ``root/MNIST/raw`` when ``root`` is given, else in ``$ADVROBUST_DATA/mnist``
    (``default_data_root()/mnist``). A folder is used when it holds the split's IDX pair,
    ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` or ``t10k-images-idx3-ubyte`` +
    ``t10k-labels-idx1-ubyte``, each named ``<stem>``, ``<stem>.gz`` or (when it is the only such
    file) ``<stem>.<anything>`` like ``train-images-idx3-ubyte.first24345.gz``; gzip is detected
    from the content. Otherwise a Keras-style ``mnist.npz`` (x_train, y_train, x_test, y_test).
    An image file holding fewer images than its label file (a prefix of the set) is paired with
    the first labels and a UserWarning says so.

    ``"cifar10"``: (N, 3, 32, 32), pixels / 255, classes in CIFAR order. Looked for in the same
    folders (``root``, ``root/cifar10``; else ``$ADVROBUST_DATA/cifar10``): the python batches
    ``cifar-10-batches-py/{data_batch_1..5, test_batch}`` (or those files in the folder itself),
    read with a restricted unpickler that runs no code; else, for the test split only,
    ``cifar10_test100.csv`` (rows ``label,p0..p3071`` with HWC-interleaved pixels).

    Args:
        name: One of ``DATASETS``: ``"digits"``, ``"mnist"``, ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        root: Folder to look in instead of ``default_data_root()``.

    Returns:
        The Dataset; its ``provenance`` names the files read and the split rule.

    Raises:
        InvalidParameterError: Unknown ``name`` or ``split``, or ``root`` not a path.
        DatasetNotFoundError: The files are in none of the folders searched (all are listed).
        DataFormatError: A file is malformed (bad magic, truncated, count mismatch, ...).
    """
    check_choice(name, "name", "load_dataset", DATASETS)
    check_choice(split, "split", "load_dataset", SPLITS)
    if name == "digits":
        return load_digits_split(split)
    if name == "mnist":
        return load_mnist(split, root)
    return load_cifar10(split, root)
