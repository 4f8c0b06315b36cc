"""The exceptions coldwatch raises. One base class, a few subclasses with structured data."""

from __future__ import annotations

__all__ = ["BrokerUnavailableError", "ColdwatchError", "ConfigError", "ConfigProblem", "StorageError"]

from dataclasses import dataclass


class ColdwatchError(Exception):
    """Base class of every error coldwatch raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One mistake in a configuration: where it is and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ConfigError(ColdwatchError):
    """A configuration file or environment override is invalid."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration {source}: {len(problems)} problem(s)\n{lines}")


class StorageError(ColdwatchError):
    """The database could not be opened, migrated or written."""


class BrokerUnavailableError(ColdwatchError):
    """No MQTT broker could be reached or started."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"MQTT broker {url} unavailable: {reason}")
