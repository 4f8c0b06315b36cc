"""Helpers of the batch and shipment tests: a site with a room, an incubator and a cryoshipper."""

from __future__ import annotations

from typing import Any

from coldwatch.config import Config

HOUR_US = 3600 * 1_000_000
SIGN_MEANING = "authored, responsible for its accuracy"
DEVICES: list[dict[str, Any]] = [
    {"id": "pc-a1", "kind": "particle_counter", "site": "s1", "area": "room-a", "grade": "B"},
    {"id": "pc-a2", "kind": "particle_counter", "site": "s1", "area": "room-a", "grade": "B"},
    {"id": "pc-b1", "kind": "particle_counter", "site": "s1", "area": "room-b", "grade": "C"},
    {"id": "inc-1", "kind": "incubator", "site": "s1", "area": "lab", "interval_s": 10},
    {"id": "ln2-1", "kind": "cryoshipper", "site": "s1", "area": "dock", "interval_s": 10},
]


def site_config(**sections: Any) -> Config:
    """A configuration with the test site's devices, in Europe/Paris."""
    return Config.model_validate({"devices": DEVICES, "site": {"timezone": "Europe/Paris"}, **sections})
