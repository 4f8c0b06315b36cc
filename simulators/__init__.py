"""Simulated GMP instruments (particle counters, CO2 incubators, LN2 dry shippers).

Everything they publish is SIMULATED data. ``models`` and ``fleet`` are pure and
deterministic for a seed; ``publisher`` is the MQTT shell that paces them in wall time.
"""

from simulators.fleet import (
    OutagePlan,
    Reading,
    build_models,
    encode_payload,
    encode_reading,
    status_topic,
    telemetry_topic,
    timeline,
)
from simulators.models import (
    ACTION_LIMITS_M3,
    AnyModel,
    CryoshipperModel,
    DeviceModel,
    Episode,
    IncubatorModel,
    ParticleCounterModel,
    Values,
    derive_seed,
    make_model,
)
from simulators.publisher import SimulationStats, run_simulation

__all__ = [
    "ACTION_LIMITS_M3",
    "AnyModel",
    "CryoshipperModel",
    "DeviceModel",
    "Episode",
    "IncubatorModel",
    "OutagePlan",
    "ParticleCounterModel",
    "Reading",
    "SimulationStats",
    "Values",
    "build_models",
    "derive_seed",
    "encode_payload",
    "encode_reading",
    "make_model",
    "run_simulation",
    "status_topic",
    "telemetry_topic",
    "timeline",
]
