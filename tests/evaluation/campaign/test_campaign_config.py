"""Campaign config validation and the store's refusals."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from _campaign_fixtures import make_checkpoint, write_config

from advrobust.evaluation.campaign import (
    CampaignConfigError,
    ResultStore,
    StoreError,
    load_config,
    parse_config,
    run_campaign,
)

BAD = """
seed = 0
bach_size = 4

[data]
name = "digits"
n = 10
colour = "red"

[[models]]
name = "a"
checkpoint = "missing.pt"

[[models]]
name = "b"
checkpoint = "mlp.pt"

[[threats]]
norm = "linf"
eps = [0.01, -0.02]

[[threats]]
norm = "l2"
eps = [0.5]

[[threats]]
norm = "l3"
eps = [1.0]

[[attacks]]
name = "pgd"
params = { steps = 10, stepz = 3 }

[[attacks]]
name = "cw"
norms = ["linf"]
params = { norm = "l2" }

[[attacks]]
name = "boundary"
norms = ["linf", "l2"]

[[attacks]]
name = "nonexistent"

[certify]
methods = ["crown", "magic", "bab"]
time_limit = -1
"""


def test_every_problem_is_listed(folder: Path) -> None:
    tmp_path = folder
    make_checkpoint(tmp_path)
    (tmp_path / "bad.toml").write_text(BAD)
    with pytest.raises(CampaignConfigError) as info:
        load_config(tmp_path / "bad.toml")
    problems = "\n".join(info.value.problems)
    expected = ["unknown key 'bach_size' (did you mean 'batch_size'?)",
                "data: unknown key 'colour'", "missing.pt",
                "threats[0].eps", "-0.02", "threats[2].norm", "'l3'",
                "PGD has no parameter 'stepz'",
                "params.norm = 'l2' does not match the linf threat",
                "boundary supports the norms {l2} but runs on the linf threat", "nonexistent",
                "'magic' is not one of", "certify.time_limit",
                "'bab' handles linf and l1 threats only"]
    for text in expected:
        assert text in problems, f"{text!r} not reported in:\n{problems}"
    assert len(info.value.problems) >= 11
    assert "problem(s)" in str(info.value)  # one error naming the file and the count


def test_valid_config_round_trips(folder: Path) -> None:
    tmp_path = folder
    config = load_config(write_config(tmp_path))
    assert config.threats[0].eps == (0.02, 0.05, 0.1, 0.2)
    assert config.data["indices"] == list(range(24))
    assert config.certify_for("linf") == (["ibp", "crown"], [])
    again = parse_config({"seed": 3, "batch_size": 4, "data": {"name": "digits", "n": 24},
                          "models": [{"name": "mlp", "checkpoint": "mlp.pt"}],
                          "threats": [{"norm": "linf", "eps": [0.2, 0.1, 0.05, 0.02]}],
                          "attacks": [{"name": "pgd", "params": {"steps": 10, "restarts": 1}}],
                          "certify": {"methods": ["ibp", "crown"], "time_limit": 0.5}},
                         base=tmp_path)
    assert again.identity() == config.identity()  # order of the eps grid does not matter


def test_store_refuses_another_config_and_bad_files(folder: Path) -> None:
    tmp_path = folder
    config = load_config(write_config(tmp_path, n=4, batch_size=4))
    db = tmp_path / "r.db"
    run_campaign(config, db, progress=False)
    other = load_config(write_config(tmp_path, n=8, batch_size=4))
    with pytest.raises(StoreError, match="another campaign config"):
        run_campaign(other, db, progress=False)
    with ResultStore(db, readonly=True) as store:  # the refused run changed nothing
        assert len(store.done_keys()) == 16 and store.integrity() == "ok"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable campaign store"):
        run_campaign(config, junk, progress=False)
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (a)").connection.commit()
    with pytest.raises(StoreError, match="not a campaign store"):
        ResultStore(plain, readonly=True)
    os.chmod(db, 0o444)
    try:
        if not os.access(db, os.W_OK):  # root may write read-only files: nothing to refuse
            with pytest.raises(StoreError, match="read-only"):
                run_campaign(config, db, progress=False)
    finally:
        os.chmod(db, 0o644)
