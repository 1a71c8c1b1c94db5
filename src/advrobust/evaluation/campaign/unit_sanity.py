"""Sanity checks over a campaign's units (added to the report beside the per-model checks).

``black-box-beats-white-box`` (Athalye, Carlini & Wagner 2018; Croce & Hein 2020): a unit that
a black-box attack broke after every white-box attack of the campaign ran on it and failed is a
typical sign of masked or obfuscated gradients. The cascade runs attacks in the config's order,
each on the units still open, and records per unit the stages that ran (``seconds``) and the
attack whose point decided it (``attack``); the attacks that used no gradients are listed in the
store's meta (:data:`BLACK_BOX_KEY`). An ensemble stage
(``strongest``) counts as white-box when it ran: its gradient members run before its black-box
ones.
"""

from __future__ import annotations

import json
from typing import Any

from advrobust.evaluation.campaign.store import ResultStore

__all__ = ["black_box_findings"]

#: Store meta key: JSON list of the campaign's attack names that used no gradients.
BLACK_BOX_KEY = "black_box_attacks"


def black_box_findings(store: ResultStore) -> dict[str, list[dict[str, Any]]]:
    """Per model, the ``black-box-beats-white-box`` warning (as a dict), or nothing."""
    from advrobust.evaluation.sanity import black_box_warning

    meta = store.meta()
    black = set(json.loads(meta.get(BLACK_BOX_KEY, "[]")))
    config = json.loads(meta.get("config", "{}"))
    white = {str(a["name"]) for a in config.get("attacks", [])} - black
    if not black or not white:
        return {}
    failed: dict[str, int] = {}
    beaten: dict[str, int] = {}
    for r in store.rows("WHERE status = 'done'"):
        if not white & set(r["seconds"]):
            continue  # no white-box attack ran on this unit
        by_black = r["verdict"] == "falsified" and r["attack"] in black
        if r["verdict"] != "falsified" or by_black:
            failed[r["model"]] = failed.get(r["model"], 0) + 1
            beaten[r["model"]] = beaten.get(r["model"], 0) + int(by_black)
    return {model: [black_box_warning(beaten[model], failed[model],
                                      "units (sample x eps)").to_dict()]
            for model in failed if beaten[model]}
