"""A stalled cluster member's partitions are taken over within the lease bound, fencing intact.

Three members run as separate ``coldwatch run`` processes against one real Mosquitto and one
real PostgreSQL. One of them is caught inside a batch transaction and then frozen (SIGSTOP),
or has its database connections silently cut (a TCP proxy that stops forwarding without
closing anything, as a network cut does) while the process lives on. Either way the stall
comes just after its COPY into the staging table has reached the server (the proxy watches
for it), so it lands inside a transaction every time, not by chance.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coldwatch.broker import RunningBroker, free_port
from coldwatch.cluster import partition_of
from coldwatch.config import Config, load_config
from coldwatch.pgserver import RunningPostgres
from tests.conftest import (
    DaemonProcess,
    db_query,
    device_entries,
    eventually,
    http_get,
    new_pg_database,
    publish_all,
    reading,
    telemetry_topic,
)
from tests.test_alarms_e2e import NO_COMM_LOSS, _uninterrupted, incubator_run
from tests.test_cluster import LEASE_S, PARTITIONS, RENEW_S, owners, victim_transitions

MEMBERS = ("alpha", "beta", "gamma")
STALLED = "alpha"
# The documented bound: the lease runs out at most lease_s after the stall, and the others
# look every renew_s. One second of slack for a shared, loaded machine.
BOUND_S = LEASE_S + RENEW_S + 1.0


def write_member(path: Path, *, broker: RunningBroker, prefix: str, url: str, name: str, port: int) -> Config:
    """A member's configuration: 16 incubators over 8 partitions, 3 s leases, its sessions named after it."""
    data: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": f"{prefix}-collector", "topic_prefix": prefix},
        # application_name: so that the test can find this member's sessions in pg_stat_activity.
        "storage": {"url": f"{url}?application_name={name}", "batch_max_delay_s": 0.02},
        "http": {"listen": f"127.0.0.1:{port}"},
        "cluster": {"enabled": True, "name": name, "partitions": PARTITIONS, "lease_s": LEASE_S},
        "rules": {"profiles": {"incubator": NO_COMM_LOSS}},
        "devices": device_entries("incubator", 16, site="s", area="lab"),
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_config(path, environ={})


def sessions_in_batch(url: str, member: str) -> list[int]:
    """Server processes of ``member`` inside a batch transaction (past its COPY into the staging table)."""
    rows = db_query(
        url,
        "SELECT a.pid FROM pg_stat_activity a WHERE a.application_name = $1 AND a.xact_start IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.pid = a.pid AND l.granted AND c.relname = 'incoming')",
        member,
    )
    return [int(r[0]) for r in rows]


def live_pids(url: str) -> set[int]:
    """Every server process."""
    return {int(r[0]) for r in db_query(url, "SELECT pid FROM pg_stat_activity")}


def stored_per_seq(url: str) -> list[tuple[str, int, int]]:
    """(device, seq, metric rows) of every stored reading."""
    rows = db_query(
        url,
        "SELECT d.device_id, r.seq, count(*) FROM readings r JOIN devices d ON d.id = r.device "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    return [(str(d), int(s), int(c)) for d, s, c in rows]


def split(held: dict[int, str | None]) -> list[int]:
    """How many partitions each member holds, smallest first (an unheld partition counts as None's)."""
    return sorted(Counter(held.values()).values())


async def sample(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample from the member's /metrics (0 when absent, -1 when the member does not answer)."""
    status, body = await http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return -1.0
    for family in text_string_to_metric_families(body.decode()):
        for found in family.samples:
            if found.name == name and found.labels == (labels or {}):
                return float(found.value)
    return 0.0


async def lost_leases(port: int) -> float:
    """How many partitions the member has stopped as lost (its /metrics)."""
    return await sample(port, "coldwatch_cluster_lease_changes_total", {"change": "lost"})


async def ready(port: int) -> bool:
    """The member answers /readyz with 200: every partition it runs is subscribed and committing."""
    return (await http_get(f"http://127.0.0.1:{port}/readyz"))[0] == 200


@dataclass
class Load:
    """A reading from every background device every ``interval_s``, from one publisher, until stopped."""

    broker: RunningBroker
    config: Config
    devices: list[str]
    interval_s: float = 0.05
    rounds: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Publish rounds (seq = round number) until ``stop`` is set."""
        topics = {d: telemetry_topic(self.config, d) for d in self.devices}
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=f"load-{uuid.uuid4().hex[:8]}", timeout=30
        ) as client:
            client.pending_calls_threshold = len(self.devices)  # a round in flight at once is intended
            while not self.stop.is_set():
                await asyncio.gather(
                    *(
                        client.publish(
                            topics[d], reading(self.rounds, {"temp_c": 37.0, "co2_pct": 5.0}), qos=1
                        )
                        for d in self.devices
                    )
                )
                self.rounds += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.interval_s)


@dataclass
class Stall:
    """How to stall the member and wake it again."""

    freeze: Callable[[], None]
    thaw: Callable[[], None]
    # When the member actually stalled, if later than freeze() was called (None: at freeze()).
    stalled_at: Callable[[], float | None] = lambda: None


async def freeze_in_batch(url: str, stall: Stall, attempts: int = 10) -> tuple[float, list[int]]:
    """Stall the member until caught inside a batch transaction; return when it stalled and those sessions."""
    for _ in range(attempts):
        stall.freeze()
        frozen_at = time.monotonic()
        await asyncio.sleep(0.3)  # the server finishes what it was sent, then waits for the member
        pids = sessions_in_batch(url, STALLED)
        if pids:
            return stall.stalled_at() or frozen_at, pids
        stall.thaw()
        await asyncio.sleep(random.uniform(0.05, 0.4))
    raise AssertionError(f"{STALLED} was never caught inside a batch transaction")


async def stalled_member_is_taken_over(
    tmp_path: Path,
    *,
    broker: RunningBroker,
    prefix: str,
    url: str,
    stalled_url: str,
    make_stall: Callable[[DaemonProcess], Stall],
) -> None:
    """The scenario both tests share: stall one of three members mid-batch, under load, mid-excursion."""
    ports = {name: free_port() for name in MEMBERS}
    configs = {
        name: write_member(
            tmp_path / f"{name}.yaml",
            broker=broker,
            prefix=prefix,
            url=stalled_url if name == STALLED else url,
            name=name,
            port=ports[name],
        )
        for name in MEMBERS
    }
    config = configs[STALLED]
    devices = [d.id for d in config.devices]
    with contextlib.ExitStack() as stack:
        members = {
            name: stack.enter_context(DaemonProcess(tmp_path / f"{name}.yaml", tmp_path / f"{name}.log"))
            for name in MEMBERS
        }
        # The first member alone creates every partition's MQTT session; then the others join.
        members[STALLED].start()
        await eventually(
            lambda: set(owners(url).values()) == {STALLED}, timeout_s=30, what=f"{STALLED} holds everything"
        )
        await eventually(lambda: ready(ports[STALLED]), timeout_s=30, what="every partition subscribed")
        for name in MEMBERS[1:]:
            members[name].start()
        await eventually(
            lambda: split(owners(url)) == [2, 3, 3],
            timeout_s=40,
            what="the partitions split 3, 3 and 2",
        )
        for name in MEMBERS:
            await eventually(lambda name=name: ready(ports[name]), timeout_s=30, what=f"{name} ready")
        held = owners(url)
        mine = sorted(p for p, o in held.items() if o == STALLED)
        victim = next(d for d in devices if partition_of(d, PARTITIONS) in mine)
        background = [d for d in devices if d != victim]
        base = datetime.now(UTC).timestamp() - 3600
        run = incubator_run(base)
        excursion = [
            (telemetry_topic(config, victim), reading(i, {"temp_c": t, "co2_pct": 5.0}, ts=ts))
            for i, (ts, t) in enumerate(run)
        ]
        load = Load(broker, config, background)
        loading = asyncio.create_task(load.run())
        try:
            # Inside the excursion's 120 s on-delay when the member stalls.
            await publish_all(broker, excursion[:12], clients=1)
            await eventually(
                lambda: sum(1 for d, _, _ in stored_per_seq(url) if d == victim) == 12,
                timeout_s=30,
                what="the first part of the excursion stored",
            )
            stall = make_stall(members[STALLED])
            frozen_at, pids = await freeze_in_batch(url, stall)
            try:
                await eventually(
                    lambda: all(owners(url).get(p) in MEMBERS[1:] for p in mine),
                    timeout_s=BOUND_S * 4,
                    what=f"{STALLED}'s partitions {mine} taken over",
                )
                moved_after_s = time.monotonic() - frozen_at
                print(f"partitions of the stalled member moved {moved_after_s:.2f} s after the stall")
                # Its transaction was ended before its partition moved (by a member taking over,
                # not by a timeout): it can never commit.
                assert not set(pids) & live_pids(url)

                async def ended_by_taker() -> bool:
                    name = "coldwatch_cluster_stalled_sessions_ended_total"
                    return sum([await sample(ports[n], name) for n in MEMBERS[1:]]) >= 1

                await eventually(ended_by_taker, timeout_s=5, what="a member counting the session it ended")
                # Readings keep being stored and alarms judged while the member is still stalled.
                await publish_all(broker, excursion[12:], clients=1)
                await eventually(
                    lambda: len(victim_transitions(url, victim)) == 3,
                    timeout_s=30,
                    what="the excursion's alarm judged by the new holder",
                )
                rounds = load.rounds
                await eventually(
                    lambda: (
                        sum(1 for d, s, _ in stored_per_seq(url) if d != victim and s < rounds)
                        == rounds * len(background)
                    ),
                    timeout_s=30,
                    what="every background reading published so far stored",
                )
            finally:
                stall.thaw()

            # Awake again, it notices its partitions are gone, stops serving them and rejoins.
            async def stopped_all() -> bool:
                return await lost_leases(ports[STALLED]) >= len(mine)

            await eventually(stopped_all, timeout_s=30, what=f"{STALLED} stopping every partition it lost")
            await eventually(
                lambda: Counter(owners(url).values())[STALLED] >= 2, timeout_s=40, what=f"{STALLED} rejoined"
            )
        finally:
            load.stop.set()
            await asyncio.wait_for(loading, 30)
        await eventually(
            lambda: len(stored_per_seq(url)) == load.rounds * len(background) + len(excursion),
            timeout_s=60,
            what="every reading stored",
        )
        for name in MEMBERS:
            # From a thread: this event loop may be forwarding the member's database traffic.
            assert await asyncio.to_thread(members[name].terminate) == 0, members[name].log()[-3000:]
        assert "lost" in members[STALLED].log()

    assert moved_after_s <= BOUND_S, moved_after_s
    # Every reading stored exactly once (two metric rows per message): none lost, none twice.
    expected = sorted(
        [(d, s, 2) for d in background for s in range(load.rounds)]
        + [(victim, i, 2) for i in range(len(run))]
    )
    assert stored_per_seq(url) == expected
    # One alarm, with exactly the history of an uninterrupted run.
    assert db_query(url, "SELECT device_id, metric FROM alarms") == [(victim, "temp_c")]
    assert [(t[1], t[2], t[3]) for t in victim_transitions(url, victim)] == _uninterrupted(config, run)


async def test_a_member_frozen_inside_a_batch_transaction_loses_its_partitions_in_time(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """A member frozen (SIGSTOP) while it holds a batch transaction open has its partitions taken over
    within lease_s + renew_s; nothing is lost or stored twice, its excursion raises one alarm, and
    once it wakes it gives up its partitions and rejoins."""
    url = new_pg_database(pg_server)
    # Its database traffic passes through a proxy that only tells when its next COPY into the
    # staging table has gone through: frozen then, it is inside a batch transaction every time.
    proxy = SilentCut(pg_server.host, pg_server.port)
    await proxy.start()
    through_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{url.rsplit('/', 1)[1]}"

    def sigstop(member: DaemonProcess) -> Stall:
        assert member.process is not None
        process = member.process

        def freeze_then_flow() -> None:
            process.send_signal(signal.SIGSTOP)
            proxy.heal()  # nothing is held back: the member itself is what stalls

        def wake() -> None:
            proxy.heal()  # calls off a freeze still awaited
            process.send_signal(signal.SIGCONT)

        return Stall(lambda: proxy.cut_in_copy(then=freeze_then_flow), wake, lambda: proxy.cut_at)

    try:
        await stalled_member_is_taken_over(
            tmp_path, broker=broker, prefix=prefix, url=url, stalled_url=through_proxy, make_stall=sigstop
        )
    finally:
        await proxy.close()


class SilentCut:
    """A TCP proxy that can stop forwarding without closing anything (a network cut), and go on later.

    While cut, bytes are held, not dropped (TCP would resend them once the network heals),
    closes are not passed on, and new connections are accepted but never answered.
    ``cut_in_copy`` cuts just after the member's next COPY into its staging table has gone
    through: the server is then inside the batch transaction, waiting for the rows, whatever
    the timing (a batch transaction lasts a few milliseconds: cut at a random moment, one
    was missed 80 times in a row).
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._cut_in_copy = False
        self._then: Callable[[], None] | None = None
        self.cut_at: float | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        """Stop forwarding."""
        self._flowing.clear()
        self.cut_at = time.monotonic()

    def cut_in_copy(self, then: Callable[[], None] | None = None) -> None:
        """Stop forwarding just after the next COPY into the staging table is passed to the server.

        ``then`` is called at that moment, once forwarding has stopped.
        """
        self.cut_at = None
        self._then = then
        self._cut_in_copy = True

    def heal(self) -> None:
        """Forward again, what was held first (a cut still awaited is called off)."""
        self._cut_in_copy = False
        self._then = None
        self._flowing.set()

    async def close(self) -> None:
        """Close every connection (each pipe then ends by itself) and stop listening."""
        self._closing = True
        self.heal()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._pipes, return_exceptions=True), 10)

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._pipes.add(me)
        self._writers.add(client_w)
        try:
            await self._flowing.wait()
            if self._closing:
                return
            up_r, up_w = await asyncio.open_connection(*self._target)
            self._writers.add(up_w)
            pumps = {
                asyncio.create_task(self._pump(client_r, up_w, upstream=True)),
                asyncio.create_task(self._pump(up_r, client_w, upstream=False)),
            }
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                up_w.close()
                self._writers.discard(up_w)
        finally:
            client_w.close()
            self._writers.discard(client_w)
            self._pipes.discard(me)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                data = b""
            await self._flowing.wait()
            if not data:
                return
            writer.write(data)
            await writer.drain()
            # The query message of asyncpg's copy_records_to_table: COPY "incoming"(...) FROM STDIN.
            if upstream and self._cut_in_copy and b"COPY" in data and b'"incoming"' in data:
                then, self._then = self._then, None
                self._cut_in_copy = False
                self.cut()
                if then is not None:
                    then()


async def test_a_member_cut_from_the_database_inside_a_batch_transaction_loses_its_partitions_in_time(
    broker: RunningBroker, prefix: str, tmp_path: Path, pg_server: RunningPostgres
) -> None:
    """A member whose database connections are silently cut while a batch transaction is open (the
    process lives, no TCP close reaches the server) has its partitions taken over within
    lease_s + renew_s; nothing is lost or stored twice, one alarm, and it rejoins once reconnected."""
    url = new_pg_database(pg_server)
    proxy = SilentCut(pg_server.host, pg_server.port)
    await proxy.start()
    database = url.rsplit("/", 1)[1]
    through_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"
    try:
        await stalled_member_is_taken_over(
            tmp_path,
            broker=broker,
            prefix=prefix,
            url=url,
            stalled_url=through_proxy,
            make_stall=lambda _: Stall(proxy.cut_in_copy, proxy.heal, lambda: proxy.cut_at),
        )
    finally:
        await proxy.close()
