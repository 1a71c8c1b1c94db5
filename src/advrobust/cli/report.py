"""``advrobust report``: one self-contained HTML page out of a campaign store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

EXAMPLE = """example:
  advrobust campaign run campaign.toml --store results.db
  advrobust report results.db --out report.html

The page embeds every figure (inline SVG / PNG) and needs no network access to view.
"""


def register(sub: Any) -> None:
    """Add the ``report`` command."""
    p = sub.add_parser(
        "report", help="HTML report of a campaign store (curves, brackets, examples)",
        description="Write one self-contained HTML file: robustness curves with the undecided "
                    "band, per-sample brackets, which attack broke what, adversarial examples, "
                    "certified radii, time per stage, sanity checks and the config.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, metavar="DB", help="campaign store (SQLite)")
    p.add_argument("--out", type=Path, default=Path("report.html"),
                   help="HTML file to write (default: report.html)")
    from advrobust.cli._common import add_force_arg

    add_force_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report and say where it is."""
    from advrobust.cli._common import check_output
    from advrobust.evaluation.report import write_report

    check_output(args.out, "--out", force=args.force)
    path = write_report(args.store, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0
