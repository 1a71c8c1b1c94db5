"""Robustness campaigns: one TOML config, per-sample brackets in a crash-safe SQLite store.

A campaign evaluates models over a dataset slice at every radius of its threat grids. The unit
of work is ``(model, sample, threat)``; its bracket (clean prediction, lowest attack margin and
the attack that reached it, each certificate's lower bound, verdict, witness, seconds per stage)
is written to the store as soon as its task finishes, so a campaign killed at any point resumes
where it stopped. See :mod:`.config` for the file format and :mod:`.cascade` for the work done
per unit.

Example::

    from advrobust.evaluation.campaign import load_config, run_campaign
    run = run_campaign(load_config("campaign.toml"), "results.db", workers=2, backend="pool")
"""

from advrobust.evaluation.campaign.config import (
    CampaignConfig,
    CampaignConfigError,
    load_config,
    parse_config,
)
from advrobust.evaluation.campaign.export import robustbench_entry, summary_rows
from advrobust.evaluation.campaign.runner import CampaignRun, plan, run_campaign
from advrobust.evaluation.campaign.store import ResultStore, StoreError, UnitRecord

__all__ = [
    "CampaignConfig",
    "CampaignConfigError",
    "CampaignRun",
    "ResultStore",
    "StoreError",
    "UnitRecord",
    "load_config",
    "parse_config",
    "plan",
    "robustbench_entry",
    "run_campaign",
    "summary_rows",
]
