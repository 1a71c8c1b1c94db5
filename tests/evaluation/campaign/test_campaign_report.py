"""The CLI over a finished store (status, export, report) and the report in headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _campaign_fixtures import write_config

from advrobust.cli import main
from advrobust.evaluation.campaign import load_config, run_campaign

# Injected into a copy of the report: collects script / resource errors and console.error
# calls, then counts the figures that rendered and writes the result into the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
console.error = (...a) => window.__errors.push(a.join(' '));
window.addEventListener('load', () => {
  const figs = document.querySelectorAll('figure');
  const img = [...document.querySelectorAll('figure img')]
      .filter(i => i.complete && i.naturalWidth > 0).length;
  const svg = [...document.querySelectorAll('figure > svg')]
      .filter(s => s.getBBox().width > 0 && s.getBoundingClientRect().height > 0).length;
  document.body.setAttribute('data-check',
      JSON.stringify({figures: figs.length, img: img, svg: svg, errors: window.__errors}));
});
</script>"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _trained: Path) -> Path:
    folder = tmp_path_factory.mktemp("report")
    shutil.copy(_trained, folder / "mlp.pt")
    db = folder / "r.db"
    run_campaign(load_config(write_config(folder, n=16, batch_size=8)), db, progress=False)
    return db


def test_status_export_and_report_commands(store: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    assert main(["campaign", "status", str(store)]) == 0
    assert "64 / 64 units done (100.0 %)" in capsys.readouterr().out
    out = store.parent
    assert main(["campaign", "export", str(store), "--csv", str(out / "u.csv"),
                 "--json", str(out / "s.json")]) == 0
    rows = list(csv.DictReader(open(out / "u.csv")))
    assert len(rows) == 64 and {r["verdict"] for r in rows} <= {"verified", "falsified",
                                                                "unknown"}
    payload = json.loads((out / "s.json").read_text())
    cards = payload["robustbench"]
    assert [c["eps"] for c in cards] == [0.02, 0.05, 0.1, 0.2]
    for c in cards:  # clean >= empirical robust >= certified, in percent
        assert float(c["clean_acc"]) >= float(c["autoattack_acc"]) >= float(c["certified_acc"])
    assert main(["report", str(store), "--out", str(out / "report.html")]) == 0
    page = (out / "report.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:|//)", page)  # no external resource
    assert page.count("<figure") == 6 and "data:image/png;base64," in page
    assert '"seed": 3' in html.unescape(page)  # the config is shown
    assert main(["campaign", "export", str(out / "nope.db"), "--csv", "-"]) == 2


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--enable-logging=stderr", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(store: Path, tmp_path: Path) -> None:
    from advrobust.evaluation.report import build_report

    page = build_report(store)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = _chromium(profile, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r"data-check=\"([^\"]*)\"", dom.stdout)
    assert found, dom.stderr[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["errors"] == [], check
    assert check["figures"] == 6 and check["img"] + check["svg"] == check["figures"], check
    assert "Uncaught" not in dom.stderr
    shot = tmp_path / "shot.png"
    report = tmp_path / "report.html"
    report.write_text(page)
    _chromium(profile, "--window-size=1000,1400", f"--screenshot={shot}", report.as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not blank
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02  # some ink, not a white page
