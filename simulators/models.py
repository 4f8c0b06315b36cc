"""Physical models of the simulated instruments: particle counter, CO2 incubator, dry shipper.

Pure: no asyncio, no I/O and no clock reads. Each model keeps its own simulated time
``t_s`` (seconds since the model was built) and advances it with ``step(dt_s)``, which
returns one reading. Randomness comes from numpy Generators seeded from the global seed
and the device id through SHA-256 (not ``hash()``, which is salted per process), so the
same seed always yields the same readings. Random events (door openings, tilts, clean-
room activity) are drawn from their own stream, so forcing an event does not shift the
measurement noise of the readings around it.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from coldwatch.catalogue import Kind

if TYPE_CHECKING:
    from collections.abc import Callable

    from coldwatch.config import DeviceConfig

__all__ = [
    "ACTION_LIMITS_M3",
    "AnyModel",
    "CryoshipperModel",
    "DeviceModel",
    "Episode",
    "IncubatorModel",
    "ParticleCounterModel",
    "Values",
    "derive_seed",
    "make_model",
]

Values = dict[str, float | bool]
Rng = np.random.Generator

# EU GMP Annex 1 (2022) maximum particles per m3 (>= 0.5 um, >= 5.0 um) in operation;
# grade D has no in-operation limit, so its at-rest limit stands in.
ACTION_LIMITS_M3: Final[dict[str, tuple[float, float]]] = {
    "A": (3_520.0, 29.0),
    "B": (352_000.0, 2_930.0),
    "C": (3_520_000.0, 29_300.0),
    "D": (3_520_000.0, 29_300.0),
}
DAY_S: Final = 86_400.0


def derive_seed(seed: int, device_id: str, stream: str = "") -> int:
    """Return a stable 64-bit seed for one random stream of one device."""
    digest = hashlib.sha256(f"{seed}\x00{device_id}\x00{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _relax(value: float, target: float, dt_s: float, tau_s: float) -> float:
    """Exact first-order approach of ``value`` towards ``target`` over ``dt_s``."""
    return target + (value - target) * math.exp(-dt_s / tau_s)


def _check_dt(dt_s: float) -> None:
    if not dt_s > 0 or not math.isfinite(dt_s):
        raise ValueError(f"dt_s must be a positive finite number of seconds, got {dt_s!r}")


class DeviceModel(Protocol):
    """What the fleet needs from a model: its simulated time and one reading per step."""

    @property
    def t_s(self) -> float:
        """Simulated seconds since the model was built."""
        ...

    def step(self, dt_s: float) -> Values:
        """Advance ``dt_s`` simulated seconds and return the reading at the new time."""
        ...


@dataclass(frozen=True, slots=True)
class Episode:
    """A bounded period of something happening: door open, tilt, lid open, activity."""

    start_s: float
    end_s: float
    magnitude: float = 1.0


class _Schedule:
    """Random episodes of one sort, drawn lazily as time advances, plus forced ones."""

    def __init__(self, rng: Rng, mean_gap_s: float, draw: Callable[[Rng], tuple[float, float]]) -> None:
        self._rng = rng
        self._mean_gap_s = mean_gap_s
        self._draw = draw  # rng -> (duration_s, magnitude)
        self._episodes: list[Episode] = []
        self._next_s = self._gap_s()

    def _gap_s(self) -> float:
        # math.inf disables random episodes; forced ones still happen.
        return math.inf if math.isinf(self._mean_gap_s) else self._rng.exponential(self._mean_gap_s)

    def add(self, episode: Episode) -> None:
        bisect.insort(self._episodes, episode, key=lambda e: e.start_s)

    def advance(self, t0_s: float, t1_s: float) -> None:
        """Prepare for a step over ``[t0_s, t1_s]``: draw episodes up to ``t1_s``, drop old ones."""
        while self._next_s <= t1_s:
            duration_s, magnitude = self._draw(self._rng)
            self.add(Episode(self._next_s, self._next_s + duration_s, magnitude))
            self._next_s += duration_s + self._gap_s()
        self._episodes = [e for e in self._episodes if e.end_s >= t0_s]

    def level(self, t_s: float) -> float:
        """Return the largest magnitude of the episodes under way at ``t_s`` (0 when none)."""
        return max((e.magnitude for e in self._episodes if e.start_s <= t_s < e.end_s), default=0.0)

    def edges(self, t0_s: float, t1_s: float) -> list[float]:
        """Episode starts and ends strictly inside ``(t0_s, t1_s)``, in order."""
        inside = {t for e in self._episodes for t in (e.start_s, e.end_s) if t0_s < t < t1_s}
        return sorted(inside)

    def weighted_overlap_s(self, t0_s: float, t1_s: float) -> float:
        """Sum of magnitude x seconds that episodes overlap ``[t0_s, t1_s]``."""
        return sum(e.magnitude * max(0.0, min(e.end_s, t1_s) - max(e.start_s, t0_s)) for e in self._episodes)


class ParticleCounterModel:
    """A 28.3 L/min airborne particle counter in a cleanroom of a given grade.

    Counts are Poisson over the sampled volume and normalised to per m3, as a real
    counter reports them; the mean is a small fraction of the grade's limit, and
    periods of activity (people moving, material transfer) multiply it.
    """

    def __init__(
        self,
        grade: str,
        *,
        noise_rng: Rng,
        event_rng: Rng,
        baseline_fraction: float = 0.05,
        coarse_fraction: float = 0.003,
        flow_lpm: float = 28.3,
        activity_mean_gap_s: float = 3_600.0,
    ) -> None:
        fine_limit_m3, coarse_limit_m3 = ACTION_LIMITS_M3[grade]
        self.fine_mean_m3 = fine_limit_m3 * baseline_fraction
        # 5.0 um particles are far rarer than the limit suggests; in grade A and B a
        # sample usually holds none and an occasional single count.
        self.coarse_mean_m3 = coarse_limit_m3 * coarse_fraction
        self.flow_lpm = flow_lpm
        self._noise = noise_rng
        self._t_s = 0.0
        self._activity = _Schedule(
            event_rng,
            activity_mean_gap_s,
            # magnitude = extra multiple of the baseline: bursts of 1.5x to 4x
            lambda r: (r.uniform(120.0, 900.0), r.uniform(0.5, 3.0)),
        )

    @property
    def t_s(self) -> float:
        """Simulated seconds since the model was built."""
        return self._t_s

    def start_activity(self, at_s: float, duration_s: float, factor: float = 5.0) -> None:
        """Force a period of activity that multiplies particle counts by ``factor``."""
        self._activity.add(Episode(at_s, at_s + duration_s, factor - 1.0))

    def step(self, dt_s: float) -> Values:
        """Sample for ``dt_s`` seconds and return counts per m3, flow and sample volume."""
        _check_dt(dt_s)
        t0_s, t1_s = self._t_s, self._t_s + dt_s
        self._activity.advance(t0_s, t1_s)
        factor = 1.0 + self._activity.weighted_overlap_s(t0_s, t1_s) / dt_s
        flow_lpm = max(0.1, self._noise.normal(self.flow_lpm, 0.005 * self.flow_lpm))
        volume_l = flow_lpm * dt_s / 60.0
        volume_m3 = volume_l / 1000.0
        # Room air is burstier than pure Poisson: a log-normal wander of the mean.
        wander = self._noise.lognormal(-0.045, 0.3)
        fine = self._noise.poisson(self.fine_mean_m3 * factor * wander * volume_m3)
        coarse = self._noise.poisson(self.coarse_mean_m3 * factor * wander * volume_m3)
        self._t_s = t1_s
        return {
            "particles_0_5um_m3": round(fine / volume_m3, 1),
            "particles_5_0um_m3": round(coarse / volume_m3, 1),
            "flow_lpm": round(flow_lpm, 2),
            "sample_volume_l": round(volume_l, 3),
        }


class IncubatorModel:
    """A CO2 incubator at 37 C, 5 % CO2, 95 % RH whose door is opened now and then.

    While the door is open, temperature, CO2 and humidity relax towards room air; after
    it closes they recover exponentially towards the set points within minutes.
    """

    def __init__(
        self,
        *,
        noise_rng: Rng,
        event_rng: Rng,
        temp_setpoint_c: float = 37.0,
        co2_setpoint_pct: float = 5.0,
        rh_setpoint_pct: float = 95.0,
        room_temp_c: float = 22.0,
        room_rh_pct: float = 45.0,
        door_mean_gap_s: float = 2 * 3_600.0,
    ) -> None:
        self.setpoints = (temp_setpoint_c, co2_setpoint_pct, rh_setpoint_pct)
        self.room = (room_temp_c, 0.04, room_rh_pct)  # 0.04 % CO2 in room air
        self.temp_c, self.co2_pct, self.rh_pct = self.setpoints
        self._noise = noise_rng
        self._t_s = 0.0
        self._door = _Schedule(event_rng, door_mean_gap_s, lambda r: (r.uniform(20.0, 90.0), 1.0))

    # Time constants (s) for temperature, CO2 and RH: open = losing to the room, closed =
    # the controllers recovering (CO2 within about 5 min, as vendors quote).
    TAU_OPEN_S: Final = (600.0, 45.0, 120.0)
    TAU_CLOSED_S: Final = (240.0, 90.0, 600.0)

    @property
    def t_s(self) -> float:
        """Simulated seconds since the model was built."""
        return self._t_s

    def open_door(self, at_s: float, duration_s: float) -> None:
        """Force the door open from ``at_s`` for ``duration_s`` seconds."""
        self._door.add(Episode(at_s, at_s + duration_s))

    def step(self, dt_s: float) -> Values:
        """Advance ``dt_s`` seconds; ``door_open`` is true if it was open at any time since."""
        _check_dt(dt_s)
        t0_s, t1_s = self._t_s, self._t_s + dt_s
        self._door.advance(t0_s, t1_s)
        # Integrate piecewise between door edges, so the result does not depend on dt_s.
        for a_s, b_s in pairwise([t0_s, *self._door.edges(t0_s, t1_s), t1_s]):
            door_open = self._door.level((a_s + b_s) / 2) > 0
            targets = self.room if door_open else self.setpoints
            taus = self.TAU_OPEN_S if door_open else self.TAU_CLOSED_S
            self.temp_c, self.co2_pct, self.rh_pct = (
                _relax(value, target, b_s - a_s, tau_s)
                for value, target, tau_s in zip(
                    (self.temp_c, self.co2_pct, self.rh_pct), targets, taus, strict=True
                )
            )
        # Latched so that a 20 s opening is not invisible to a 60 s reading interval.
        was_open = self._door.weighted_overlap_s(t0_s, t1_s) > 0 or self._door.level(t1_s) > 0
        self._t_s = t1_s
        return {
            "temp_c": round(self.temp_c + self._noise.normal(0.0, 0.03), 2),
            "co2_pct": round(max(0.0, self.co2_pct + self._noise.normal(0.0, 0.03)), 2),
            "rh_pct": round(min(100.0, self.rh_pct + self._noise.normal(0.0, 0.3)), 1),
            "door_open": was_open,
        }


class CryoshipperModel:
    """An LN2 dry shipper with two temperature probes, a level sensor and a tilt sensor.

    The vapour stays near -190 C while LN2 remains; LN2 boils off over the hold time,
    faster when the shipper is tilted or its lid is open. Once the level nears zero the
    vapour warms, and with no LN2 left it climbs through -150 C and -135 C towards room
    temperature over hours.
    """

    SUBSTEP_S: Final = 60.0
    COLD_C: Final = -190.0
    LOW_LEVEL_PCT: Final = 5.0
    TAU_COLD_S: Final = 900.0
    TAU_LID_S: Final = 600.0
    TAU_WARM_S: Final = 12 * 3_600.0

    def __init__(
        self,
        *,
        noise_rng: Rng,
        event_rng: Rng,
        hold_time_s: float = 10 * DAY_S,
        hold_time_spread: float = 0.1,
        ln2_level_pct: float = 100.0,
        battery_life_s: float = 60 * DAY_S,
        room_temp_c: float = 22.0,
        tilt_mean_gap_s: float = 2 * DAY_S,
        lid_mean_gap_s: float = 3 * DAY_S,
        tilt_gain: float = 20.0,
        lid_gain: float = 20.0,
    ) -> None:
        self._noise = noise_rng
        # Hold time varies between units of one model (domain.md: up to 40 %).
        spread = noise_rng.uniform(1 - hold_time_spread, 1 + hold_time_spread)
        self.hold_time_s = hold_time_s * spread
        self.probe_b_offset_c = noise_rng.uniform(-0.5, 0.5)
        self.ln2_level_pct = ln2_level_pct
        self.temp_c = self.COLD_C
        self.battery_pct = 100.0
        self.battery_life_s = battery_life_s
        self.room_temp_c = room_temp_c
        self.tilt_gain = tilt_gain
        self.lid_gain = lid_gain
        self._t_s = 0.0
        self._tilt = _Schedule(
            event_rng, tilt_mean_gap_s, lambda r: (r.uniform(300.0, 7_200.0), r.uniform(15.0, 90.0))
        )
        self._lid = _Schedule(event_rng, lid_mean_gap_s, lambda r: (r.uniform(30.0, 120.0), 1.0))

    @property
    def t_s(self) -> float:
        """Simulated seconds since the model was built."""
        return self._t_s

    def tilt(self, at_s: float, angle_deg: float, duration_s: float) -> None:
        """Force a tilt of ``angle_deg`` from vertical (90 = on its side) for ``duration_s``."""
        self._tilt.add(Episode(at_s, at_s + duration_s, angle_deg))

    def open_lid(self, at_s: float, duration_s: float) -> None:
        """Force the lid open from ``at_s`` for ``duration_s`` seconds."""
        self._lid.add(Episode(at_s, at_s + duration_s))

    def set_ln2_level(self, level_pct: float) -> None:
        """Set the LN2 level now, as a refill or a leak would."""
        self.ln2_level_pct = min(100.0, max(0.0, level_pct))

    def _boil_off_pct_s(self, tilt_deg: float, lid_open: bool) -> float:
        # On its side (90 deg) a shipper loses most of its hold time within hours.
        factor = 1.0 + self.tilt_gain * (tilt_deg / 90.0) ** 2
        if lid_open:
            factor *= self.lid_gain
        return 100.0 / self.hold_time_s * factor

    def _target(self, lid_open: bool) -> tuple[float, float]:
        """Temperature the vapour is heading for and the time constant, given LN2 and lid."""
        if self.ln2_level_pct <= 0:
            return self.room_temp_c, self.TAU_LID_S if lid_open else self.TAU_WARM_S
        if lid_open:
            return -120.0, self.TAU_LID_S
        shortfall = max(0.0, 1.0 - self.ln2_level_pct / self.LOW_LEVEL_PCT)
        return self.COLD_C + 25.0 * shortfall, self.TAU_COLD_S

    def _advance(self, dt_s: float, tilt_deg: float, lid_open: bool) -> None:
        if self.ln2_level_pct > 0:
            loss_pct = self._boil_off_pct_s(tilt_deg, lid_open) * dt_s
            self.ln2_level_pct = max(0.0, self.ln2_level_pct - loss_pct)
        target_c, tau_s = self._target(lid_open)
        self.temp_c = _relax(self.temp_c, target_c, dt_s, tau_s)

    def step(self, dt_s: float) -> Values:
        """Advance ``dt_s`` seconds and return both probes, level, lid, tilt and battery."""
        _check_dt(dt_s)
        t0_s, t1_s = self._t_s, self._t_s + dt_s
        self._tilt.advance(t0_s, t1_s)
        self._lid.advance(t0_s, t1_s)
        edges = {*self._tilt.edges(t0_s, t1_s), *self._lid.edges(t0_s, t1_s)}
        # Sub-steps keep the level and the temperature coupled when LN2 runs out mid-step.
        n_sub = math.ceil(dt_s / self.SUBSTEP_S)
        edges.update(t0_s + dt_s * i / n_sub for i in range(1, n_sub))
        for a_s, b_s in pairwise([t0_s, *sorted(edges), t1_s]):
            mid_s = (a_s + b_s) / 2
            self._advance(b_s - a_s, self._tilt.level(mid_s), self._lid.level(mid_s) > 0)
        self._t_s = t1_s
        self.battery_pct = max(0.0, 100.0 - 100.0 * t1_s / self.battery_life_s)
        # Always draw the upright wobble, so a forced tilt leaves the noise stream aligned.
        tilt_deg = max(self._tilt.level(t1_s), abs(self._noise.normal(1.5, 0.7)))
        temp_b_c = self.temp_c + self.probe_b_offset_c  # probe B sits a little apart
        # Latched like the incubator door, so a short opening shows at any interval.
        lid_was_open = self._lid.weighted_overlap_s(t0_s, t1_s) > 0 or self._lid.level(t1_s) > 0
        return {
            "temp_c": round(self.temp_c + self._noise.normal(0.0, 0.1), 2),
            "temp_b_c": round(temp_b_c + self._noise.normal(0.0, 0.1), 2),
            "ln2_level_pct": round(self.ln2_level_pct, 2),
            "lid_open": lid_was_open,
            "tilt_deg": round(min(180.0, max(0.0, tilt_deg + self._noise.normal(0.0, 0.3))), 1),
            "battery_pct": round(self.battery_pct, 1),
        }


AnyModel = ParticleCounterModel | IncubatorModel | CryoshipperModel


def make_model(device: DeviceConfig, seed: int) -> AnyModel:
    """Build the model for a registered device, seeded from ``seed`` and the device id."""
    noise = np.random.default_rng(derive_seed(seed, device.id, "noise"))
    events = np.random.default_rng(derive_seed(seed, device.id, "events"))
    if device.kind is Kind.PARTICLE_COUNTER:
        assert device.grade is not None  # DeviceConfig guarantees a grade for counters
        return ParticleCounterModel(device.grade, noise_rng=noise, event_rng=events)
    if device.kind is Kind.INCUBATOR:
        return IncubatorModel(noise_rng=noise, event_rng=events)
    return CryoshipperModel(noise_rng=noise, event_rng=events)
