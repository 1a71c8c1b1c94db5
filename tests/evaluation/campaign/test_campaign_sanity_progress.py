"""The report's black-box-beats-white-box check over campaign units; progress of long stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _campaign_fixtures import write_config

from advrobust.evaluation.campaign import ResultStore, UnitRecord, load_config, run_campaign
from advrobust.evaluation.campaign.unit_sanity import BLACK_BOX_KEY, black_box_findings
from advrobust.evaluation.report import build_report

CONFIG = {"models": [{"name": "m"}], "threats": [{"norm": "linf", "eps": [0.1]}],
          "attacks": [{"name": "pgd"}, {"name": "square"}]}


def _unit(sample: int, verdict: str, attack: str | None, stages: list[str]) -> UnitRecord:
    return UnitRecord(model="m", sample=sample, norm="linf", eps_index=0, eps=0.1, label=0,
                      verdict=verdict, clean_pred=0, clean_margin=1.0, attack=attack,
                      decided_by=attack or "crown", seconds={s: 0.01 for s in stages})


def test_black_box_win_after_failed_white_box_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with ResultStore(db) as store:
        store.bind(CONFIG, "0" * 64, "test")
        store.write_units([
            _unit(0, "falsified", "square", ["pgd", "square"]),  # PGD failed, Square broke it
            _unit(1, "falsified", "pgd", ["pgd"]),               # white-box broke it
            _unit(2, "unknown", None, ["pgd", "square"]),        # both failed
            _unit(3, "verified", None, ["crown"]),                # no attack ran
            _unit(4, "falsified", "square", ["square"])])         # PGD never ran on it
        assert black_box_findings(store) == {}  # nothing is known to be black-box yet
        store.set_meta(BLACK_BOX_KEY, json.dumps(["square"]))
        (found,) = black_box_findings(store)["m"]
    assert found["code"] == "black-box-beats-white-box"
    assert "broke 1 of 2 units" in found["message"] and found["fraction"] == 0.5
    page = build_report(db)
    assert "[black-box-beats-white-box]" in page and "broke 1 of 2 units" in page


def test_campaign_records_its_black_box_attacks(folder: Path) -> None:
    path = write_config(folder, n=8, batch_size=8)
    text = path.read_text().replace('methods = ["ibp", "crown"]', 'methods = ["ibp"]')
    path.write_text(text.replace("[certify]", '[[attacks]]\nname = "square"\n'
                                              'params = { queries = 100 }\n\n[certify]'))
    config = load_config(path)
    run_campaign(config, folder / "r.db", progress=False)
    with ResultStore(folder / "r.db", readonly=True) as store:
        rows = list(store.rows())
        assert json.loads(store.meta()[BLACK_BOX_KEY]) == ["square"]
        found = black_box_findings(store)
    # the finding counts exactly the units Square broke after PGD had run on them and failed
    beaten = sum(r["attack"] == "square" and "pgd" in r["seconds"] for r in rows)
    assert any("square" in r["seconds"] for r in rows)
    if beaten:
        assert f"broke {beaten} of" in found["mlp"][0]["message"]
    else:
        assert found == {}


def test_exact_stage_reports_progress_per_task(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.evaluation.campaign.cascade import stage_progress

    monkeypatch.setenv("ADVROBUST_PROGRESS_INTERVAL", "0")  # a status line on every unit
    path = write_config(folder, n=8, batch_size=4)
    path.write_text(path.read_text().replace('methods = ["ibp", "crown"]',
                                             'methods = ["ibp", "bab"]'))
    run_campaign(load_config(path), folder / "r.db", progress=True)
    err = capsys.readouterr().err
    assert stage_progress() == "off"  # the driver's mode is restored afterwards
    with ResultStore(folder / "r.db", readonly=True) as store:
        bab = {r["sample"] // 4 for r in store.rows() if "bab" in r["seconds"]}
    assert bab, "no unit reached the exact stage: the test needs a harder setting"
    for chunk in bab:  # each task whose units went to BaB said how far it was, and when done
        lines = [ln for ln in err.splitlines() if ln.startswith(f"bab mlp linf #{chunk}: ")]
        assert lines and "elapsed" in lines[0] and lines[-1].endswith("(done)")
    assert not [ln for ln in err.splitlines() if ln.startswith("bab mlp linf #")
                and int(ln.split("#")[1].split(":")[0]) not in bab]
