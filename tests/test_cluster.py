"""Several collectors against one real Mosquitto and one real PostgreSQL: partitions, failover.

Members run as separate ``coldwatch run`` processes so that one can be SIGKILLed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from coldwatch.broker import RunningBroker
from coldwatch.cluster import ClusterDaemon, Leases, partition_of
from coldwatch.config import Config, load_config
from coldwatch.daemon import Daemon
from coldwatch.errors import StorageError
from coldwatch.leases import session_settings
from coldwatch.mqtt import _check_granted
from coldwatch.notify.model import Channel, OutboxItem
from coldwatch.payload import Telemetry
from coldwatch.pgserver import RunningPostgres
from coldwatch.storage import Batch
from coldwatch.storage.postgres import OUTBOX_CHANNEL, AlarmIds, Fence, PostgresStorage
from tests.conftest import (
    DaemonProcess,
    db_query,
    device_entries,
    eventually,
    new_pg_database,
    publish_all,
    reading,
    telemetry_topic,
)
from tests.test_alarms_e2e import NO_COMM_LOSS, _uninterrupted, incubator_run
from tests.test_notify import Receiver
from tests.test_notify_e2e import HOT, incubator, incubator_rules, publish

US = 1_000_000
PARTITIONS = 8
LEASE_S = 3.0
RENEW_S = LEASE_S / 3


def member_config(path: Path, *, broker: RunningBroker, prefix: str, url: str, name: str) -> Config:
    """A cluster member's configuration: 16 incubators, 8 partitions, 3 s leases."""
    data: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": f"{prefix}-collector", "topic_prefix": prefix},
        "storage": {"url": url, "batch_max_delay_s": 0.02},
        "http": {"listen": "127.0.0.1:0"},
        "cluster": {"enabled": True, "name": name, "partitions": PARTITIONS, "lease_s": LEASE_S},
        "rules": {"profiles": {"incubator": NO_COMM_LOSS}},
        "devices": device_entries("incubator", 16, site="s", area="lab"),
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_config(path, environ={})


def owners(url: str) -> dict[int, str | None]:
    """Partition -> the member holding an unexpired lease on it (None: nobody; {} before any schema)."""
    try:
        rows = db_query(
            url,
            "SELECT partition, CASE WHEN expires_at > now() THEN owner END FROM partition_leases ORDER BY 1",
        )
    except asyncpg.UndefinedTableError:
        return {}
    return {int(p): o.split("#")[0] if o else None for p, o in rows}


async def test_two_members_share_store_once_and_fail_over(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """Two members split the partitions; every reading is stored once; a killed member's partitions
    move to the survivor within the lease time, and its device's excursion raises exactly one alarm."""
    url = new_pg_database(pg_server)
    configs = {
        name: member_config(tmp_path / f"{name}.yaml", broker=broker, prefix=prefix, url=url, name=name)
        for name in ("alpha", "beta")
    }
    config = configs["alpha"]
    devices = [d.id for d in config.devices]
    with (
        DaemonProcess(tmp_path / "alpha.yaml", tmp_path / "alpha.log") as alpha,
        DaemonProcess(tmp_path / "beta.yaml", tmp_path / "beta.log") as beta,
    ):
        alpha.start()
        await eventually(
            lambda: set(owners(url).values()) == {"alpha"}, timeout_s=30, what="alpha holds everything"
        )
        beta.start()
        await eventually(
            lambda: (
                sorted(owners(url).values(), key=str).count("beta") == PARTITIONS // 2
                and list(owners(url).values()).count("alpha") == PARTITIONS // 2
            ),
            timeout_s=30,
            what="the partitions split four and four",
        )
        held = owners(url)
        # The excursion device: an incubator whose partition alpha holds.
        victim = next(d for d in devices if held[partition_of(d, PARTITIONS)] == "alpha")
        others = [d for d in devices if d != victim]
        base = datetime.now(UTC).timestamp() - 3600
        run = incubator_run(base)
        excursion = [
            (telemetry_topic(config, victim), reading(i, {"temp_c": t, "co2_pct": 5.0}, ts=ts))
            for i, (ts, t) in enumerate(run)
        ]
        background = [
            (telemetry_topic(config, d), reading(i, {"temp_c": 37.0, "co2_pct": 5.0}, ts=base + 10 * i))
            for i in range(40)
            for d in others
        ]
        # First half: everyone reports; the victim goes above the alert limit, inside its 120 s delay.
        # (The excursion from one client, in order: out of order it would be judged as late data.)
        await asyncio.gather(
            publish_all(broker, background[: len(background) // 2]),
            publish_all(broker, excursion[:12], clients=1),
        )
        await eventually(
            lambda: stored_count(url) == len(background) // 2 + 12, timeout_s=30, what="first half stored"
        )
        alpha.kill()
        killed = time.monotonic()
        # Second half, published while alpha's partitions have no collector: the broker keeps it.
        await asyncio.gather(
            publish_all(broker, background[len(background) // 2 :]),
            publish_all(broker, excursion[12:], clients=1),
        )
        await eventually(
            lambda: set(owners(url).values()) == {"beta"}, timeout_s=LEASE_S * 4, what="beta holds everything"
        )
        moved_after_s = time.monotonic() - killed
        print(f"partitions moved to the survivor {moved_after_s:.2f} s after the kill (lease {LEASE_S} s)")
        await eventually(
            lambda: stored_count(url) == len(background) + len(excursion), timeout_s=60, what="all stored"
        )
        await eventually(
            lambda: len(victim_transitions(url, victim)) == 3, timeout_s=30, what="the excursion's history"
        )
        assert beta.terminate() == 0, beta.log()[-3000:]

    # Within the lease time: the lease runs out at most LEASE_S after alpha's last renewal, and
    # beta looks every RENEW_S (a second of slack for a shared machine).
    assert moved_after_s <= LEASE_S + RENEW_S + 1.0, moved_after_s
    # Every reading stored exactly once: each (device, seq) once per metric, no more, none missing.
    rows = db_query(
        url,
        "SELECT d.device_id, r.seq, count(*) FROM readings r JOIN devices d ON d.id = r.device "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    expected = sorted(
        [(d, i, 2) for d in others for i in range(40)] + [(victim, i, 2) for i in range(len(run))]
    )
    assert sorted((str(d), int(s), int(c)) for d, s, c in rows) == expected
    # The moved device's excursion: exactly the history of an uninterrupted run, one alarm.
    alarms = db_query(url, "SELECT device_id, metric FROM alarms")
    assert alarms == [(victim, "temp_c")]
    transitions = victim_transitions(url, victim)
    assert [(t[1], t[2], t[3]) for t in transitions] == _uninterrupted(config, run)
    assert "partition" in beta.log()


def stored_count(url: str) -> int:
    """Distinct readings stored."""
    rows = db_query(url, "SELECT count(*) FROM (SELECT DISTINCT device, ts_us, seq FROM readings) AS r")
    return int(rows[0][0])


def victim_transitions(url: str, device_id: str) -> list[tuple[Any, ...]]:
    """(alarm, event, ts_us, severity) of the device's alarm transitions."""
    return db_query(
        url,
        "SELECT t.alarm_id, t.event, t.ts_us, t.severity FROM alarm_transitions t "
        "JOIN alarms a ON a.id = t.alarm_id WHERE a.device_id = $1 ORDER BY t.id",
        device_id,
    )


async def test_a_member_delivers_every_partitions_notifications_and_idles_empty_ones(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """Three devices over eight partitions: empty partitions run no collector (and do not crash), and
    alarms raised in any partition reach the webhook, delivered by the holder of partition 0."""
    url = new_pg_database(pg_server)
    receiver = Receiver()
    await receiver.start()
    ids = ["inc-a", "inc-b", "inc-c"]
    data: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": f"{prefix}-collector", "topic_prefix": prefix},
        "storage": {"url": url, "batch_max_delay_s": 0.02},
        "http": {"listen": "127.0.0.1:0"},
        "cluster": {"enabled": True, "name": "solo", "partitions": PARTITIONS, "lease_s": LEASE_S},
        "rules": incubator_rules(*ids),
        "notify": {
            "webhooks": {"pager": {"url": f"{receiver.url}/pager", "timeout_s": 2}},
            "escalation": [{"tiers": [{"after_s": 0, "notify": ["pager"]}]}],
        },
        "devices": [incubator(d) for d in ids],
    }
    path = tmp_path / "solo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    config = load_config(path, environ={})
    busy = {partition_of(d, PARTITIONS) for d in ids}
    assert busy != {0}, "the check needs a device outside partition 0"
    member = ClusterDaemon(config)
    stop = asyncio.Event()
    running = asyncio.create_task(member.run(stop))
    try:
        await eventually(
            lambda: set(owners(url).values()) == {"solo"}, timeout_s=20, what="all partitions held"
        )
        await eventually(
            lambda: set(member.workers) == busy, timeout_s=10, what="collectors for busy partitions"
        )

        async def subscribed() -> bool:
            for worker in list(member.workers.values()):
                check = worker.daemon.readiness
                if check is None or not (await check())["broker_connected"]:
                    return False
            return True

        await eventually(subscribed, timeout_s=20, what="every partition's session subscribed")
        for seq, device in enumerate(ids):
            await publish(broker, config, device, seq, HOT)
        await eventually(
            lambda: {r.body["alarm"]["device"] for r in receiver.received} >= set(ids),
            timeout_s=20,
            what="every partition's alarm at the webhook",
        )
        await asyncio.sleep(RENEW_S * 2)  # two more rounds: nothing crashed or restarted meanwhile
        assert set(member.workers) == busy
        assert not any(w.task.done() for w in member.workers.values())
        assert member.registry.get_sample_value("coldwatch_cluster_partitions_owned") == PARTITIONS
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
        await receiver.stop()
    assert set(owners(url).values()) == {None}, "a clean stop hands every lease back"


# --- leases, fences and ids on their own ------------------------------------------------


@pytest.fixture
async def store(pg_server: RunningPostgres) -> Any:
    """An open PostgreSQL storage on a fresh database."""
    storage = PostgresStorage(new_pg_database(pg_server))
    await storage.open()
    yield storage
    await storage.close()


async def test_fair_share_and_handover_between_members(store: PostgresStorage) -> None:
    """One member takes all; a second one joining gets half once the first hands surplus back."""
    a = Leases(store, "a", PARTITIONS, LEASE_S)
    b = Leases(store, "b", PARTITIONS, LEASE_S)
    await a.prepare()
    await b.prepare()

    first = await a.round()
    assert sorted(first.acquired) == list(range(PARTITIONS))
    joined = await b.round()  # two members now: b's share is 4, but nothing is free yet
    assert joined.acquired == {}
    again = await a.round()  # a sees two members and hands back its surplus
    assert again.surplus == [4, 5, 6, 7]
    await a.release(again.surplus)
    taken = await b.round()
    assert sorted(taken.acquired) == [4, 5, 6, 7]
    assert all(g == 2 for g in taken.acquired.values())  # a new generation for the new holder


async def test_a_collector_outside_the_cluster_is_refused_on_its_database(
    store: PostgresStorage, broker: RunningBroker, prefix: str, tmp_path: Path
) -> None:
    """A standalone collector on a cluster's database would raise the members' alarms again."""
    await Leases(store, "a", PARTITIONS, LEASE_S).prepare()
    path = tmp_path / "standalone.yaml"
    data = {
        "mqtt": {"url": broker.url, "client_id": f"{prefix}-rogue", "topic_prefix": prefix},
        "storage": {"url": store.url},
        "http": {"listen": "127.0.0.1:0"},
        "devices": [incubator("inc-a")],
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(StorageError, match=r"belongs to a cluster \(8 partitions\)"):
        await Daemon(load_config(path, environ={})).run(asyncio.Event())


async def test_a_member_with_another_partition_count_is_refused(store: PostgresStorage) -> None:
    """Members must agree on the number of partitions, or devices would be in two places."""
    await Leases(store, "a", PARTITIONS, LEASE_S).prepare()
    with pytest.raises(StorageError, match=r"same cluster\.partitions"):
        await Leases(store, "b", PARTITIONS * 2, LEASE_S).prepare()


async def test_a_fenced_batch_is_refused_once_the_lease_is_gone(store: PostgresStorage) -> None:
    """Batches commit only while the writer still holds its partition's lease (same generation)."""
    leases = Leases(store, "a", 1, 1.0)
    await leases.prepare()
    change = await leases.round()
    generation = change.acquired[0]
    cfg = load_config_text(
        f"devices: [{{id: inc-01, kind: incubator, site: s, area: lab}}]\nstorage: {{url: '{store.url}'}}\n"
    )
    fenced = PostgresStorage(store.url, fence=Fence(0, "a", generation))
    await fenced.open()
    try:
        await fenced.register_devices(cfg.devices)
        ok = await fenced.write_batch(
            Batch(readings=[(Telemetry("inc-01", 1, 1_714_564_800 * US, False, (("temp_c", 37.0),)), 0)])
        )
        assert ok.stored == 1
        await asyncio.sleep(1.2)  # the lease runs out without renewal
        with pytest.raises(StorageError, match="no longer leased"):
            await fenced.write_batch(
                Batch(readings=[(Telemetry("inc-01", 2, 1_714_564_810 * US, False, (("temp_c", 37.0),)), 0)])
            )
    finally:
        await fenced.close()
    assert (await store.counts())["readings"] == 1


async def test_a_takeover_ends_a_batch_left_open_by_a_stalled_holder(store: PostgresStorage) -> None:
    """A batch left open by a stalled member (holding its partition's fence) does not hold the partition
    once the lease has run out: the next holder takes it at once, ending that batch, which never commits."""
    a, b = Leases(store, "a", 1, 1.0), Leases(store, "b", 1, 1.0)
    await a.prepare()
    generation = (await a.round()).acquired[0]
    cfg = load_config_text(
        f"devices: [{{id: inc-01, kind: incubator, site: s, area: lab}}]\nstorage: {{url: '{store.url}'}}\n"
    )
    fenced = PostgresStorage(store.url, fence=Fence(0, "a", generation))
    await fenced.open()
    try:
        await fenced.register_devices(cfg.devices)
        # A batch's first steps, then the member stalls: the transaction stays open on the server.
        conn = await asyncpg.connect(store.url)
        try:
            batch = conn.transaction()
            await batch.start()
            await fenced._check_fence(conn, Fence(0, "a", generation))
            await conn.execute("UPDATE devices SET last_seq = 42 WHERE device_id = 'inc-01'")
            await asyncio.sleep(1.2)  # the lease runs out; the stalled member never renews it
            taken = await b.round()
            assert taken.acquired == {0: generation + 1}
            assert taken.ended == 1
            # The session is gone (how the client reports it depends on when it hears of it).
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)):
                await batch.commit()
        finally:
            conn.terminate()
    finally:
        await fenced.close()
    assert await store.pool.fetchval("SELECT last_seq FROM devices WHERE device_id = 'inc-01'") != 42


async def test_a_lease_round_left_open_by_a_stalled_member_does_not_block_the_takeover(
    store: PostgresStorage,
) -> None:
    """A member stalled inside its lease round (its lease rows locked) is ended by the server before its
    leases run out (idle_in_transaction_session_timeout below the lease), so the takeover proceeds."""
    lease_s = 1.0
    a, b = Leases(store, "a", 1, lease_s), Leases(store, "b", 1, lease_s)
    await a.prepare()
    await a.round()
    # The member's lease session, stalled in its next round: its lease row locked, never committed.
    conn = await asyncpg.connect(store.url, server_settings=session_settings(lease_s, "lease"))
    try:
        renewal = conn.transaction()
        await renewal.start()
        await conn.execute("UPDATE partition_leases SET expires_at = expires_at WHERE owner = 'a'")
        await asyncio.sleep(lease_s + 0.2)  # the lease runs out meanwhile
        assert (await b.round()).acquired == {0: 2}
    finally:
        conn.terminate()


async def test_a_batch_with_notifications_wakes_listeners_when_it_commits(store: PostgresStorage) -> None:
    """The cluster's deliverer may run on another member: it hears of new outbox rows by NOTIFY."""
    heard = asyncio.Event()
    listener = await asyncpg.connect(store.url)
    await listener.add_listener(OUTBOX_CHANNEL, lambda *_: heard.set())
    try:
        await store.write_batch(Batch(readings=[]))
        await asyncio.sleep(0.3)
        assert not heard.is_set(), "a batch without notifications says nothing"
        item = OutboxItem("n-1", Channel.WEBHOOK, "pager", b"{}", None, 1_714_564_800 * US)
        await store.write_batch(Batch(notifications=[item]))
        await asyncio.wait_for(heard.wait(), 5)
    finally:
        await listener.close()


async def test_alarm_ids_never_collide_between_members(store: PostgresStorage) -> None:
    """Two members drawing ids from small blocks get disjoint ids, across block boundaries."""
    first, second = AlarmIds(store, 100), AlarmIds(store, 100)
    await first.start()
    await second.start()
    drawn: list[int] = []
    for burst in range(7):
        drawn += [f() for _ in range(50) for f in (first, second)]
        await asyncio.sleep(0.05 * (burst % 2))  # bursts of half a block; fetches run in between
    assert len(drawn) == 700
    assert len(set(drawn)) == len(drawn)


def load_config_text(text: str) -> Config:
    """A configuration parsed from ``text``."""
    from coldwatch.config import parse_config  # noqa: PLC0415

    return parse_config(text, environ={})


def test_a_refused_subscription_is_not_readiness() -> None:
    """A SUBACK refusal (MQTT v5 reason code or 3.1.1 0x80) raises, so the source reconnects and is
    not reported ready: a partition the broker will not feed must not look healthy."""
    granted_v5 = [
        ReasonCode(PacketTypes.SUBACK, identifier=1),
        ReasonCode(PacketTypes.SUBACK, identifier=0x87),
    ]
    with pytest.raises(aiomqtt.MqttError, match="refused the subscription to b/#"):
        _check_granted(["a/#", "b/#"], granted_v5)
    with pytest.raises(aiomqtt.MqttError, match="refused the subscription to a/#"):
        _check_granted(["a/#", "b/#"], (0x80, 1))
    _check_granted(["a/#", "b/#"], (1, 1))
    _check_granted(["a/#"], [ReasonCode(PacketTypes.SUBACK, identifier=1)])
