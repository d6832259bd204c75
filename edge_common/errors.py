"""Exception hierarchy: one root, narrow subclasses."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Root of every error edge-agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """Configuration is invalid; carries every problem found."""

    def __init__(self, problems: list[str], path: str | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(problems))


class OutboxError(EdgeAgentError):
    """The SQLite outbox cannot be used."""


BufferError_ = OutboxError  # the former name


class BufferCorrupt(OutboxError):
    """The buffer database failed its integrity check."""


class BufferFull(OutboxError):
    """The disk is full and not even the reduced batch could be written."""


class UplinkError(EdgeAgentError):
    """The MQTT uplink failed."""


class DriverError(EdgeAgentError):
    """A driver cannot run (bad port, missing adapter...)."""


class TransportClosed(DriverError):
    """The device went away (port vanished, link dropped)."""


class ControlError(EdgeAgentError):
    """The local control API failed."""


class AgentRefused(ControlError):
    """The agent answered a request with an error: its `code` (docs/CLI.md) and `message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class AgentNotReachable(ControlError):
    """No agent answers on the control socket."""


class AgentWentAway(AgentNotReachable):
    """The agent closed the control connection (it stopped or restarted)."""
