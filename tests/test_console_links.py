"""Notifications carry the alarm's console address (``console.base_url``)."""

from __future__ import annotations

import orjson
import pytest

from coldwatch.config import Config
from coldwatch.notify.messages import alertmanager_resend
from coldwatch.notify.planner import Notifier
from tests.test_notify import DEVICES, T0, chain, make_alarm, raised

BASE = "https://coldwatch.site.example"


def test_webhook_and_alertmanager_carry_the_console_address() -> None:
    """With console.base_url, the webhook body and the Alertmanager annotation link the alarm's page."""
    notifier = Notifier(chain(alertmanager={"url": "http://am:9093"}), DEVICES, console_base_url=BASE)
    alarm = make_alarm()
    am, hook = notifier.plan([raised(alarm)], [alarm], T0)
    expected = f"{BASE}/console/alarms/{alarm.id}"
    assert orjson.loads(hook.body)["alarm"]["console_url"] == expected
    assert orjson.loads(am.body)[0]["annotations"]["console_url"] == expected
    config = chain(alertmanager={"url": "http://am:9093"}).alertmanager
    assert config is not None
    [resent] = alertmanager_resend([alarm], DEVICES, T0, config, BASE)
    assert resent["annotations"]["console_url"] == expected


def test_without_a_console_address_nothing_is_linked() -> None:
    """Without console.base_url, notifications carry no console address."""
    notifier = Notifier(chain(alertmanager={"url": "http://am:9093"}), DEVICES)
    alarm = make_alarm()
    am, hook = notifier.plan([raised(alarm)], [alarm], T0)
    assert "console_url" not in orjson.loads(hook.body)["alarm"]
    assert "console_url" not in orjson.loads(am.body)[0]["annotations"]


def test_console_base_url_is_validated() -> None:
    """console.base_url must be an http(s) address; a trailing slash is dropped."""
    assert Config.model_validate({"console": {"base_url": BASE + "/"}}).console.base_url == BASE
    with pytest.raises(ValueError, match="base_url"):
        Config.model_validate({"console": {"base_url": "ftp://x"}})
