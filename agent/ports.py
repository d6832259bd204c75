"""The narrow core: what control, health, notify, reload and remote see of a running agent.

Read-only views return frozen snapshots (copies: nothing a caller holds changes under it, and
nothing it does to one reaches the agent); the command interface is how reload and remote act.
`agent.runtime.Agent` implements every protocol here. This module imports nothing above the
uplink (its types only, under TYPE_CHECKING), so the modules that use it never import the Agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agent.states import DeviceState

if TYPE_CHECKING:
    from agent.buffer import BufferStats, Fault
    from agent.config import AgentConfig, BufferConfig, DeviceConfig
    from agent.model import ClockState
    from agent.pipeline import AcceptListener
    from agent.uplink import Uplink, UplinkStats



@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One running device as it was when asked."""

    id: str
    driver: str
    online: bool | None  # liveness as last reported on P/events; None while starting
    link: str
    link_detail: str
    readings: int
    last_reading: float | None  # wall time of the newest reading
    last_reading_age: float | None  # seconds, when the snapshot was taken
    rate: float  # readings per second since the device started
    errors: Mapping[str, int]
    restarts: int
    last_error: str
    last_values: Mapping[str, Any]
    expected_interval: float

    @property
    def state(self) -> DeviceState:
        return DeviceState.STARTING if self.online is None else DeviceState.ONLINE if self.online \
            else DeviceState.OFFLINE


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """The in-memory side of the buffer (never waits for the buffer thread)."""

    depth: int  # committed readings in the outbox
    queued: int  # accepted in memory, not yet committed
    overflow: int
    accepted: int
    writer: Literal["ok"] | Fault
    writer_detail: str
    busy_since: float | None  # monotonic start of the commit in flight
    last_commit: float  # monotonic
    commit_interval: float


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """A shared service (e.g. the BLE scanner): its `status()` part of health, and whether it gave up."""

    name: str
    status: Mapping[str, Any] | None  # None: the service has no status of its own
    healthy: bool
    unhealthy_reason: str


class AgentView(Protocol):
    """Read-only view of a running agent."""

    @property
    def cfg(self) -> AgentConfig: ...  # the running configuration (frozen models)
    @property
    def started(self) -> float: ...  # wall time
    @property
    def started_monotonic(self) -> float: ...
    def clock_state(self) -> ClockState: ...
    def is_ready(self) -> bool: ...
    def is_stopping(self) -> bool: ...
    def running_devices(self) -> tuple[str, ...]: ...
    def device_snapshot(self, device_id: str) -> DeviceSnapshot | None: ...
    def device_snapshots(self) -> tuple[DeviceSnapshot, ...]: ...
    def pipeline_snapshot(self) -> PipelineSnapshot | None: ...  # None before start
    async def buffer_stats(self) -> BufferStats: ...
    def uplink_snapshot(self) -> UplinkStats | None: ...  # None before start
    def service_snapshots(self, *, with_status: bool = False) -> tuple[ServiceSnapshot, ...]: ...
    def commands_summary(self) -> dict[str, Any] | None: ...  # None without [commands]
    async def health(self, reader: str = "health") -> dict[str, Any]: ...


class Supervised(AgentView, Protocol):
    """What systemd supervision (agent/notify.py) needs: the view, and the start and stop."""

    def when_ready(self, fn: Callable[[], None]) -> None: ...
    async def wait_stopping(self) -> None: ...


class ControlPort(AgentView, Protocol):
    """What the control socket (agent/control.py) needs beyond the view."""

    def subscribe(self, listener: AcceptListener) -> bool: ...  # False: no pipeline yet
    def unsubscribe(self, listener: AcceptListener) -> None: ...
    def reconnect_uplink(self) -> None: ...


class AgentCommands(ControlPort, Protocol):
    """The command interface reload and remote act through."""

    @property
    def uplink(self) -> Uplink: ...  # the current MQTT session (replaced by restart_uplink)
    def set_config(self, cfg: AgentConfig) -> None: ...
    async def remove_device(self, device_id: str) -> None: ...
    def add_device(self, dev: DeviceConfig) -> object: ...
    async def set_buffer_limits(self, b: BufferConfig) -> None: ...
    def new_uplink(self, cfg: AgentConfig) -> Uplink: ...  # ConfigError when its settings are unusable
    async def restart_uplink(self, uplink: Uplink) -> None: ...
    async def add_event(self, type_: str, body: dict[str, Any]) -> None: ...
    async def reload_config(self) -> bool: ...  # agent/reload.py; False: rejected, previous kept
    def command_reader(self, verb: str) -> Callable[[AgentConfig], dict[str, Any]] | None: ...
    async def status(self) -> dict[str, Any]: ...  # the control socket's `status`
    def device_rows(self) -> list[dict[str, Any]]: ...  # the control socket's `devices`
