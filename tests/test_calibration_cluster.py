"""Calibration alarms in a cluster: raised by the partition's holder, never twice after a failover."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from coldwatch.broker import RunningBroker
from coldwatch.cluster import partition_of
from coldwatch.config import load_config
from coldwatch.identity_model import SignerIdentity
from coldwatch.pgserver import RunningPostgres
from coldwatch.records.calibration import DAY_US
from coldwatch.records.instruments import Instruments
from coldwatch.roles import Permission
from coldwatch.storage.identity_store import identity_store
from tests.conftest import DaemonProcess, db_query, device_entries, eventually, new_pg_database
from tests.identity_helpers import FAST_IDENTITY, OPERATOR_PW, opened, people
from tests.test_alarms_e2e import NO_COMM_LOSS
from tests.test_cluster import LEASE_S, PARTITIONS, owners


def calibration_alarms(url: str) -> list[tuple[int, str, str]]:
    """(id, device, state) of every calibration alarm."""
    rows = db_query(url, "SELECT id, device_id, state FROM alarms WHERE rule = 'calibration_due' ORDER BY id")
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def test_a_calibration_alarm_survives_failover_unduplicated(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """The holder of the point's partition raises it; the member taking over after a kill raises nothing."""
    url = new_pg_database(pg_server)
    for name in ("alpha", "beta"):
        data = {
            "mqtt": {"url": broker.url, "client_id": f"{prefix}-collector", "topic_prefix": prefix},
            "storage": {"url": url, "batch_max_delay_s": 0.02},
            "http": {"listen": "127.0.0.1:0"},
            "cluster": {"enabled": True, "name": name, "partitions": PARTITIONS, "lease_s": LEASE_S},
            "rules": {"profiles": {"incubator": NO_COMM_LOSS}},
            "identity": FAST_IDENTITY,
            "calibration": {"check_interval_s": 0.2},
            "devices": device_entries("incubator", 16, site="s", area="lab"),
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = load_config(tmp_path / "alpha.yaml", environ={})
    with (
        DaemonProcess(tmp_path / "alpha.yaml", tmp_path / "alpha.log") as alpha,
        DaemonProcess(tmp_path / "beta.yaml", tmp_path / "beta.log") as beta,
    ):
        alpha.start()
        await eventually(lambda: set(owners(url).values()) == {"alpha"}, timeout_s=30, what="alpha holds all")
        beta.start()
        await eventually(
            lambda: list(owners(url).values()).count("beta") == PARTITIONS // 2, timeout_s=30, what="a split"
        )
        held = owners(url)
        point = next(d.id for d in config.devices if held[partition_of(d.id, PARTITIONS)] == "alpha")
        async with opened(url, config) as (storage, identity, clock):
            await people(identity)
            olga = (await identity.sign_in("olga", OPERATOR_PW, "test")).principal
            signer = await identity.verify_signer(
                action="calibrate",
                permission=Permission.CALIBRATE,
                meaning="responsibility",
                user="olga",
                password=OPERATOR_PW,
                client="test",
            )
            records = Instruments(identity_store(storage), "UTC", [d.id for d in config.devices])
            await records.register(
                olga, serial="SN-1", model="m", manufacturer="a", reason="r", now_us=clock()
            )
            await records.calibrate(
                SignerIdentity(signer.name, signer.full_name, signer.role),
                "SN-1",
                performed_us=clock() - DAY_US,
                due_us=clock() + 5 * DAY_US,
                certificate="C",
                as_found="ok",
                as_left="ok",
                performed_by="lab",
                passed=True,
                meaning="responsibility",
                reason="r",
                now_us=clock(),
            )
            await records.install(olga, point, "SN-1", reason="r", now_us=clock())
        await eventually(
            lambda: len(calibration_alarms(url)) == 1, timeout_s=30, what="the calibration alert"
        )
        [(alarm_id, device, state)] = calibration_alarms(url)
        assert (device, state) == (point, "active_unacknowledged")
        alpha.kill()
        await eventually(
            lambda: set(owners(url).values()) == {"beta"}, timeout_s=LEASE_S * 4, what="failover"
        )
        await asyncio.sleep(2.0)  # ten of beta's checks on the point, each of which could raise it again
        assert calibration_alarms(url) == [(alarm_id, point, "active_unacknowledged")]
        assert beta.terminate() == 0, beta.log()[-3000:]
    events = db_query(url, "SELECT event FROM alarm_transitions WHERE alarm_id = $1 ORDER BY id", alarm_id)
    assert [e[0] for e in events] == ["raised"]
    assert db_query(url, "SELECT count(*) FROM alarms")[0][0] == 1  # 15 points without an instrument: none
