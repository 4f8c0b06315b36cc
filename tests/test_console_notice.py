"""The site notice (``site.notice``): on every console page, escaped; the demo says its data is simulated."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from coldwatch.broker import RunningBroker
from coldwatch.config import Config
from coldwatch.demo import bundled_demo_config
from tests.conftest import running_daemon, silent_incubator_config
from tests.identity_helpers import FAST_IDENTITY

NOTICE = "Validation copy <b>not</b> for release & review"


async def test_the_notice_is_on_the_sign_in_page_and_escaped(
    broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """A configured notice appears on the console's pages as text, its markup escaped."""
    config = silent_incubator_config(
        tmp_path / "c.yaml",
        broker=broker,
        prefix=prefix,
        api={},
        identity=FAST_IDENTITY,
        site={"notice": NOTICE, "timezone": "Europe/Paris"},
    )
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        page = (await client.get("/console/sign-in")).text
    assert 'class="notice"' in page
    assert "Validation copy &lt;b&gt;not&lt;/b&gt; for release &amp; review" in page
    assert "<b>not</b>" not in page
    assert 'class="utc-site"' not in page  # Paris: times in UTC and in site time


async def test_without_a_notice_there_is_none(broker: RunningBroker, prefix: str, tmp_path: Path) -> None:
    """No notice configured: the pages carry no notice banner."""
    config = silent_incubator_config(
        tmp_path / "c.yaml", broker=broker, prefix=prefix, api={}, identity=FAST_IDENTITY
    )
    async with (
        running_daemon(config) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=30) as client,
    ):
        page = (await client.get("/console/sign-in")).text
    assert 'class="notice"' not in page
    assert '<body class="utc-site">' in page  # the default zone is UTC: site times (.local) hidden


def test_the_demo_says_its_readings_are_simulated() -> None:
    """The bundled demo configuration carries a notice that its readings are simulated."""
    notice = bundled_demo_config().site.notice
    assert notice is not None
    assert "simulated" in notice


def test_a_blank_or_overlong_notice_is_refused() -> None:
    """A notice is trimmed text of at most 300 characters."""
    for bad in ["", " padded ", "x" * 301]:
        with pytest.raises(ValueError, match="notice"):
            Config.model_validate({"site": {"notice": bad}})


def test_every_site_time_hides_with_its_separator() -> None:
    """Each site time in the console's templates sits in a ``.local`` span that holds its " / " too.

    A UTC site hides those spans (the time would repeat the UTC one); a separator left outside
    would show as a stray "UTC /". Where the site time goes on a line of its own (a batch's
    stays), the separator is in a ``.sep`` span of its own, still inside.
    """
    import re  # noqa: PLC0415
    from importlib import resources  # noqa: PLC0415

    folder = resources.files("coldwatch.console").joinpath("templates")
    for template in folder.iterdir():
        text = template.read_text()
        for match in re.finditer(r'<span class="local">', text):
            after = text[match.end() :]
            assert after.startswith((" / ", '<span class="sep"> / </span>')), (
                template.name,
                text[match.start() - 40 : match.end() + 20],
            )
            assert not text[: match.start()].rstrip().endswith("/"), (
                template.name,
                text[match.start() - 40 : match.end()],
            )
