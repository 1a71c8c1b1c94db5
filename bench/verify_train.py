"""Train the MNIST networks the verification benchmarks use (``small`` and ``mlp2``).

Run by hand (not by pytest)::

    python bench/verify_train.py --data-dir ../shared/data/mnist --out runs

Writes ``runs/verify_small_mnist.pt`` and ``runs/verify_mlp2_mnist.pt`` (plain cross-entropy
training with the course's recipe: SGD, lr 0.1, batches of 100).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from advrobust.data import load_dataset
from advrobust.models import build_model
from advrobust.training import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arch", nargs="+", default=["small", "mlp2"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("mnist", "train", args.data_dir)
    test = load_dataset("mnist", "test", args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.arch:
        kwargs = {"input_shape": (1, 28, 28), "num_classes": 10}
        model = build_model(arch, **kwargs, seed=0)
        path = args.out / f"verify_{arch}_mnist.pt"
        history = fit(model, train, test=test, epochs=args.epochs, seed=0, progress=False,
                      checkpoint_path=path, arch=arch, arch_kwargs=kwargs,
                      metadata={"dataset": "mnist", "purpose": "bench/verify_*"})
        print(arch, path, "test error per epoch:", history)


if __name__ == "__main__":
    main()
