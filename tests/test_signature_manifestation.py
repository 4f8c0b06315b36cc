"""How a signature's manifestation reads (21 CFR 11.50): name, date and time, meaning."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coldwatch.signatures import manifestation

AT_US = int(datetime(2026, 7, 1, 6, 18, 44, tzinfo=UTC).timestamp() * 1_000_000)


def test_site_time_follows_utc_when_the_site_is_elsewhere() -> None:
    """A site in another zone sees UTC and its own time, named by its zone."""
    text = manifestation("Olga Operator", "olga", AT_US, "Europe/Paris", "reviewed")
    assert text == (
        "signed by Olga Operator (olga) on 2026-07-01 06:18:44 UTC / "
        "2026-07-01 08:18:44 CEST (Europe/Paris), meaning: reviewed"
    )


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "Zulu"])
def test_a_utc_site_sees_the_time_once(zone: str) -> None:
    """A site whose zone is UTC, by any of its names, is not shown the same time twice."""
    text = manifestation("Olga Operator", "olga", AT_US, zone, "reviewed")
    assert text == "signed by Olga Operator (olga) on 2026-07-01 06:18:44 UTC, meaning: reviewed"
