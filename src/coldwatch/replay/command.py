"""``coldwatch replay``: run validation scenarios and write the evidence report."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from coldwatch.config import load_config
from coldwatch.errors import ConfigError
from coldwatch.replay.runner import ScenarioResult, run_scenario
from coldwatch.replay.scenario import LoadedScenario, load_scenario
from coldwatch.replay.timeline import build_streams

__all__ = ["add_parser"]

# Below this many readings a scenario runs too fast for a progress bar to help.
PROGRESS_MIN_READINGS = 200_000


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``coldwatch replay``."""
    p = sub.add_parser(
        "replay",
        help="replay validation scenarios and write an evidence report (exit 1 if any expectation fails)",
        description=(
            "Run scenario files through the collector's rules engine in event time (a 30-day "
            "scenario takes seconds), or with --via-broker through a real MQTT broker into a running "
            "daemon, and judge every expectation. Exit status 0: all passed; 1: an expectation failed "
            "or was not run; 2: a scenario file is invalid."
        ),
    )
    p.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO", help="scenario YAML files")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write report.html, report.json, junit.xml, traceability.csv",
    )
    p.add_argument(
        "--engine",
        choices=["auto", "reading", "batched"],
        default="auto",
        help="reading: the daemon's reading-by-reading path; batched: vectorised, same alarms (default: "
        "batched when readings arrive in order)",
    )
    p.add_argument(
        "--via-broker", action="store_true", help="publish through MQTT into the daemon of --config"
    )
    p.add_argument("-c", "--config", type=Path, help="the running daemon's configuration (with --via-broker)")
    p.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="with --via-broker: scenario seconds per second (0: as fast as possible)",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress"
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    p.set_defaults(func=_cmd_replay)


def _load(paths: Sequence[Path]) -> list[LoadedScenario] | None:
    loaded: list[LoadedScenario] = []
    bad = False
    for path in paths:
        try:
            loaded.append(load_scenario(path))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            bad = True
    return None if bad else loaded


def _run_one(loaded: LoadedScenario, args: argparse.Namespace) -> ScenarioResult:
    streams = build_streams(loaded.scenario)
    total = sum(len(s) for s in streams.values())
    show = (
        args.progress if args.progress is not None else sys.stderr.isatty() and total >= PROGRESS_MIN_READINGS
    )
    with tqdm(
        total=total,
        desc=loaded.name[:40],
        unit=" readings",
        unit_scale=True,
        disable=not show,
        file=sys.stderr,
    ) as progress:

        def advance(done: int) -> None:
            progress.update(done)

        if args.via_broker:
            from coldwatch.replay.broker import replay_via_broker  # noqa: PLC0415 - needs the MQTT client

            return replay_via_broker(loaded, load_config(args.config), speed=args.speed, progress=advance)
        return run_scenario(loaded, mode=args.engine, progress=advance, streams=streams)


def _summary(result: ScenarioResult) -> None:
    verdict = "PASS" if result.passed else "FAIL"
    passed = sum(r.passed for r in result.results)
    print(
        f"{verdict}  {result.loaded.name}: {passed}/{len(result.results)} expectations, "
        f"{result.readings:,} readings, {result.mode}, {result.elapsed_s:.2f} s"
    )
    for error in result.errors:
        print(f"      error: {error}")
    for r in result.results:
        if not r.passed:
            verdict = r.status.upper().replace("_", " ")
            print(f"      {verdict} {r.expectation.id} ({r.expectation.label}): {r.detail}")


def _cmd_replay(args: argparse.Namespace) -> int:
    if args.via_broker and args.config is None:
        print("--via-broker needs --config: the running daemon's configuration", file=sys.stderr)
        return 2
    loaded = _load(args.scenarios)
    if loaded is None:
        return 2
    executed_at = datetime.now(UTC)
    results: list[ScenarioResult] = []
    for scenario in loaded:
        result = _run_one(scenario, args)
        _summary(result)
        results.append(result)
    if args.report is not None:
        from coldwatch.replay.report import Provenance, write_report  # noqa: PLC0415 - plotting is heavy

        provenance = Provenance.create(
            executed_at=executed_at, command=shlex.join(["coldwatch", *sys.argv[1:]])
        )
        files = write_report(results, args.report, provenance=provenance)
        print(f"report: {files}", file=sys.stderr)
    failed = [r for r in results if not r.passed]
    total = sum(len(r.results) for r in results)
    print(f"{len(results) - len(failed)}/{len(results)} scenarios passed, {total} expectations checked")
    return 1 if failed else 0
