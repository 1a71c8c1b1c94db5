"""A small trained digits checkpoint shared by the CLI tests that need one."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mlp2 trained 3 epochs on 300 digits (~1 s), saved as an advrobust checkpoint."""
    from advrobust.data import load_dataset
    from advrobust.models import build_model, save_checkpoint
    from advrobust.training import fit

    train = load_dataset("digits", "train").take(300)
    model = build_model("mlp2", train.input_shape, 10, seed=0)
    fit(model, train, epochs=3, batch_size=50, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "digits_mlp.pt"
    save_checkpoint(path, model.eval(), arch="mlp2",
                    arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 10})
    return path
