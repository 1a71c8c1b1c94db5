"""Datasets: scikit-learn's bundled digits, MNIST (IDX or npz), CIFAR-10 (pickle batches or CSV).

Every loader returns a ``Dataset``: float32 images (N, C, H, W) in [0, 1], int64 labels, class
names and a provenance string. ``load_dataset(name, split, root)`` is the entry point.
"""

from advrobust.data._cifar import CIFAR10_CLASSES
from advrobust.data._dataset import Dataset
from advrobust.data._download import MNIST_MD5, MNIST_URL, download_mnist
from advrobust.data._idx import read_idx, write_idx
from advrobust.data._load import DATASETS, SPLITS, load_dataset
from advrobust.data._paths import default_data_root

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "MNIST_MD5",
    "MNIST_URL",
    "SPLITS",
    "Dataset",
    "default_data_root",
    "download_mnist",
    "load_dataset",
    "read_idx",
    "write_idx",
]
