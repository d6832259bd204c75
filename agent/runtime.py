"""The supervisor: owns every task of a running agent (drivers, writer, uplink, upkeep)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.backoff import Backoff
from agent.buffer import BufferStats, Outbox
from agent.clock import ClockMonitor, watch_clock
from agent.config import AgentConfig, BufferConfig, DeviceConfig
from agent.health import HealthReporter
from agent.logs import device_context
from agent.memory import malloc_trim
from agent.model import ClockState
from agent.pipeline import AcceptListener, Pipeline
from agent.ports import DeviceSnapshot, PipelineSnapshot, ServiceSnapshot
from agent.reload import Reloader
from agent.states import DeviceState
from agent.ticks import next_tick
from agent.uplink import Uplink, UplinkStats
from drivers import driver_class
from drivers.base import DeviceContext, Driver

if TYPE_CHECKING:
    from agent.control import ControlServer
    from agent.remote import CommandService

log = logging.getLogger(__name__)

STOP_TIMEOUT = 8.0  # SIGTERM must end within 10 s
SETTLE_TIMEOUT = 1.5  # at stop, for in-flight batches to be acknowledged (else they are sent again)
LIVENESS_TICK = 1.0  # liveness deadlines are checked on this grid (shared wake-ups, 1 s precision)


class DeviceRunner:
    """One configured device: its driver, restarted with backoff whenever it crashes."""

    def __init__(self, agent: Agent, device: DeviceConfig) -> None:
        self.agent = agent
        self.device = device
        self.cls: type[Driver] = driver_class(device.driver)
        self.ctx = DeviceContext(device, agent.pipeline.submit, agent.clock.state, agent.services)
        self.ctx.on_link_change = agent._on_link_change
        self.online: bool | None = None  # liveness as last reported on P/events
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.last_error = ""

    @property
    def expected_interval(self) -> float:
        return self.device.expected_interval or self.cls.default_expected_interval

    async def run(self) -> None:
        device_context.set((self.device.id, self.device.driver))  # journal fields for this task's logs
        backoff = Backoff(0.5, 30.0)
        while True:
            driver = self.cls(self.device, self.ctx)
            started = time.monotonic()
            try:
                await driver.run()
                raise RuntimeError("driver returned")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.ctx.restarts += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.ctx.set_link("failed", self.last_error)
                log.error("device %s (%s) crashed: %s; restarting", self.device.id, self.device.driver,
                          self.last_error, exc_info=not isinstance(e, OSError))
            if time.monotonic() - started > 60:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    def snapshot(self) -> DeviceSnapshot:
        ctx = self.ctx
        age = None if ctx.last_reading is None else round(time.time() - ctx.last_reading, 3)
        up = max(1e-9, time.monotonic() - self.started)
        return DeviceSnapshot(
            id=self.device.id, driver=self.device.driver, online=self.online, link=ctx.link,
            link_detail=ctx.link_detail, readings=ctx.readings, last_reading=ctx.last_reading,
            last_reading_age=age, rate=round(ctx.readings / up, 3), errors=dict(ctx.errors),
            restarts=ctx.restarts, last_error=self.last_error, last_values=dict(ctx.last_values),
            expected_interval=self.expected_interval,
        )


class Agent:
    """A running gateway agent; implements the narrow core of agent/ports.py for the modules it runs."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.clock = ClockMonitor()
        self.services: dict[str, Any] = {}
        self.started = time.time()
        self.started_monotonic = time.monotonic()  # rates "since start" (health) survive clock steps
        self.pipeline: Pipeline = None  # type: ignore[assignment]  # set by start()
        self.uplink: Uplink = None  # type: ignore[assignment]
        self.devices: dict[str, DeviceRunner] = {}
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.ready = asyncio.Event()
        self.on_ready: list[Callable[[], None]] = []
        self.failure: str | None = None  # why a core task died (the process then exits 1)
        self._reload_task: asyncio.Task[Any] | None = None
        self.control: ControlServer | None = None  # the CLI's socket
        self._upkeep_wake = asyncio.Event()
        self.commands: CommandService | None = None  # when [commands] is configured
        self.health_reporter = HealthReporter(self)  # P/health and status, each with its own windows
        self.reloader = Reloader(self)
        # read-only views the CLI layer lends to remote commands (verb -> fn(cfg) -> JSON), e.g. buffer.stats
        self.command_readers: dict[str, Callable[[AgentConfig], dict[str, Any]]] = {}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        from agent.control import start_control

        self.control = await start_control(self)  # first: a second agent stops here
        b = self.cfg.buffer
        outbox = Outbox(b.path, max_bytes=b.max_bytes, max_age=b.max_age, on_full=b.on_full,
                        synchronous=b.synchronous, gateway=self.cfg.gateway.id,
                        min_free_disk=b.min_free_disk, page_size=b.page_size)
        self.pipeline = await Pipeline.open(outbox, commit_interval=b.commit_interval, queue_size=b.queue_size,
                                            sync_interval=b.sync_interval)
        if outbox.quarantined:
            self.pipeline.new_events.set()
        log.info("buffer %s: epoch %s, %d readings waiting, next seq %d",
                 b.path, outbox.epoch, outbox.depth, outbox.next_seq)
        self.uplink = self.new_uplink(self.cfg)
        if self.cfg.commands is not None:  # signed remote commands on P/commands (agent/remote.py)
            from agent.remote import CommandService

            self.commands = CommandService(self)
            self.uplink.on_command = self.commands.offer
            self._spawn(self.commands.run(), "commands")
        self._spawn(self.pipeline.run_writer(), "writer")
        self._spawn(self.uplink.run(), "uplink")
        self._spawn(self._upkeep(), "upkeep")
        self._spawn(watch_clock(self.clock, self.pipeline), "clock")
        for dev in self.cfg.devices:
            if dev.enabled:
                self.add_device(dev)
        self.ready.set()
        for fn in self.on_ready:
            fn()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=name)
        self._tasks.append(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.critical("core task %s died: %r; stopping", t.get_name(), t.exception())
            self.failure = f"core task {t.get_name()} died"
            self.stop_event.set()

    def add_device(self, dev: DeviceConfig) -> DeviceRunner:
        if "ble" not in self.services and driver_class(dev.driver).device_transport(dev) == "ble":
            from drivers.ble.scanner import BleScanner  # only when a BLE device is configured

            self.services["ble"] = BleScanner.from_config(self.cfg)
        runner = DeviceRunner(self, dev)
        self.devices[dev.id] = runner
        runner.task = asyncio.create_task(runner.run(), name=f"device:{dev.id}")
        self._upkeep_wake.set()  # its liveness deadline
        return runner

    async def remove_device(self, device_id: str) -> None:
        runner = self.devices.pop(device_id)
        if runner.task is not None:
            runner.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner.task

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file (agent/reload.py); one reload at a time."""
        if self._reload_task is not None and not self._reload_task.done():
            log.warning("reload already in progress; SIGHUP ignored")
            return
        self._reload_task = asyncio.create_task(self._reload(), name="reload")

    async def _reload(self) -> None:
        await self.ready.wait()
        try:
            await self.reloader.reload()
        except Exception:
            log.exception("reload failed")

    async def restart_uplink(self, uplink: Uplink) -> None:
        """Replace the MQTT session (reload); unacknowledged readings are resent from the outbox."""
        old = self.uplink
        if uplink.prefix != old.prefix:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await old.publish_offline()
        for t in [t for t in self._tasks if t.get_name() == "uplink"]:
            self._tasks.remove(t)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        uplink.on_command = old.on_command
        self.uplink = uplink
        self._spawn(uplink.run(), "uplink")

    async def stop(self) -> None:
        """Stop drivers, flush memory to SQLite, say goodbye on MQTT, close. Bounded in time."""
        if self._reload_task is not None:
            self._reload_task.cancel()
            await asyncio.gather(self._reload_task, return_exceptions=True)
        log.info("stopping: flushing %d queued readings", self.pipeline.queued if self.pipeline else 0)
        if self.control is not None:
            await self.control.stop()
        for dev_id in list(self.devices):
            await self.remove_device(dev_id)
        for name, svc in self.services.items():
            if hasattr(svc, "aclose"):
                try:
                    async with asyncio.timeout(2):
                        await svc.aclose()
                except Exception:
                    log.exception("closing service %s failed", name)
        if self.pipeline is not None:
            self.pipeline.hurry.set()
            try:
                async with asyncio.timeout(STOP_TIMEOUT / 2):
                    await self.pipeline.flush()
            except Exception:
                log.exception("final flush failed")
        if self.uplink is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SETTLE_TIMEOUT):
                    if await self.uplink.settle():
                        log.info("stopping: every accepted reading is acknowledged by the broker")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.uplink.publish_offline()
        for t in self._tasks:
            t.cancel()
        try:
            async with asyncio.timeout(STOP_TIMEOUT / 2):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:  # a task that swallowed its cancellation must not hang the stop
            stuck = ", ".join(t.get_name() for t in self._tasks if not t.done())
            log.error("stopping: tasks still running after %.0fs: %s", STOP_TIMEOUT / 2, stuck)
        if self.pipeline is not None:
            await self.pipeline.close()
        log.info("stopped")

    async def run_until_stopped(self) -> None:
        await self.start()
        try:
            await self.stop_event.wait()
        finally:
            await asyncio.shield(self.stop())

    # -- upkeep ---------------------------------------------------------------------------
    async def _upkeep(self) -> None:
        """Max-age expiry and device liveness; sleeps until the next instant something can change.

        A device online goes offline exactly `expected_interval` after its last reading; one not
        online comes back with its next reading (its context wakes us then). Nothing is polled.
        """
        expire_every = max(1.0, min(60.0, self.cfg.buffer.max_age / 20))
        next_expire = 0.0
        while True:
            self._upkeep_wake.clear()
            now = time.monotonic()
            if now >= next_expire:
                await self.pipeline.expire()
                malloc_trim()  # memory a burst or a drain needed goes back to the OS
                next_expire = next_tick(expire_every, now)
            wake = next_expire
            for runner in list(self.devices.values()):
                await self._check_liveness(runner, now)
                wake = min(wake, self._liveness_deadline(runner))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - time.monotonic())):
                    await self._upkeep_wake.wait()

    def _liveness_deadline(self, runner: DeviceRunner) -> float:
        """When the device's liveness changes without a reading (inf: only a reading changes it)."""
        ctx = runner.ctx
        if runner.online:
            ctx.on_reading = None
            assert ctx.last_reading_mono is not None
            return next_tick(LIVENESS_TICK, ctx.last_reading_mono + runner.expected_interval)
        ctx.on_reading = self._wake_upkeep  # the next reading may bring it online
        last = ctx.last_reading_mono
        if last is not None and time.monotonic() - last <= runner.expected_interval:
            return 0.0  # a reading came while we were busy: check again now
        if runner.online is None:
            return next_tick(LIVENESS_TICK, runner.started + runner.expected_interval)  # still starting
        return math.inf

    def _wake_upkeep(self, ctx: DeviceContext) -> None:
        ctx.on_reading = None
        self._upkeep_wake.set()

    async def _check_liveness(self, runner: DeviceRunner, now: float) -> None:
        ctx = runner.ctx
        last = ctx.last_reading_mono
        alive = last is not None and now - last <= runner.expected_interval
        if runner.online is None and not alive and now - runner.started < runner.expected_interval:
            return  # still starting
        if alive != runner.online:
            runner.online = alive
            state = DeviceState.ONLINE if alive else DeviceState.OFFLINE
            log.log(logging.INFO if alive else logging.WARNING, "device %s is %s", runner.device.id, state,
                    extra={"device": runner.device.id, "driver": runner.device.driver})
            await self.pipeline.add_event("device", {
                "device": runner.device.id, "driver": runner.device.driver, "state": state,
                "link": ctx.link, "detail": ctx.link_detail[:200],
            })

    def _on_link_change(self, ctx: DeviceContext) -> None:
        log.info("device %s: link %s %s", ctx.device.id, ctx.link, ctx.link_detail)

    # -- the narrow core (agent/ports.py): views --------------------------------------------
    def clock_state(self) -> ClockState:
        return self.clock.state()

    def is_ready(self) -> bool:
        return self.ready.is_set()

    def is_stopping(self) -> bool:
        return self.stop_event.is_set()

    def when_ready(self, fn: Callable[[], None]) -> None:
        self.on_ready.append(fn)

    async def wait_stopping(self) -> None:
        await self.stop_event.wait()

    def running_devices(self) -> tuple[str, ...]:
        return tuple(self.devices)

    def device_snapshot(self, device_id: str) -> DeviceSnapshot | None:
        runner = self.devices.get(device_id)
        return None if runner is None else runner.snapshot()

    def device_snapshots(self) -> tuple[DeviceSnapshot, ...]:
        return tuple(r.snapshot() for r in list(self.devices.values()))

    def pipeline_snapshot(self) -> PipelineSnapshot | None:
        p = self.pipeline
        if p is None:
            return None
        return PipelineSnapshot(
            depth=p.outbox.depth, queued=p.queued, overflow=p.overflow, accepted=p.accepted, writer=p.writer,
            writer_detail=p.writer_detail, busy_since=p.busy_since, last_commit=p.last_commit,
            commit_interval=p.commit_interval,
        )

    async def buffer_stats(self) -> BufferStats:
        return await self.pipeline.call(self.pipeline.outbox.stats)

    def uplink_snapshot(self) -> UplinkStats | None:
        return None if self.uplink is None else dataclasses.replace(self.uplink.stats)

    def service_snapshots(self, *, with_status: bool = False) -> tuple[ServiceSnapshot, ...]:
        return tuple(
            ServiceSnapshot(
                name=name,
                status=svc.status() if with_status and hasattr(svc, "status") else None,
                healthy=getattr(svc, "healthy", True) is not False,
                unhealthy_reason=getattr(svc, "unhealthy_reason", "") or "",
            )
            for name, svc in self.services.items()
        )

    def commands_summary(self) -> dict[str, Any] | None:
        return None if self.commands is None else self.commands.summary()

    async def health(self, reader: str = "health") -> dict[str, Any]:
        """The `P/health` body (also the core of `status`, reader="status"); built in agent/health.py."""
        return await self.health_reporter.build(reader)

    # -- the narrow core: commands ----------------------------------------------------------
    def subscribe(self, listener: AcceptListener) -> bool:
        pipe = self.pipeline
        if pipe is None:
            return False
        if listener not in pipe.listeners:
            pipe.listeners.append(listener)
        return True

    def unsubscribe(self, listener: AcceptListener) -> None:
        pipe = self.pipeline
        if pipe is not None and listener in pipe.listeners:
            pipe.listeners.remove(listener)

    def reconnect_uplink(self) -> None:
        self.uplink.reconnect_now()

    def set_config(self, cfg: AgentConfig) -> None:
        self.cfg = cfg

    async def set_buffer_limits(self, b: BufferConfig) -> None:
        """Buffer settings a reload changes in place (the outbox's limits on its own thread)."""
        pipe, outbox = self.pipeline, self.pipeline.outbox

        def apply_limits() -> None:
            outbox.max_bytes, outbox.max_age, outbox.on_full = b.max_bytes, b.max_age, b.on_full

        await pipe.call(apply_limits)
        pipe.commit_interval = b.commit_interval
        pipe.sync_interval = b.sync_interval

    def new_uplink(self, cfg: AgentConfig) -> Uplink:
        return Uplink(cfg, self.pipeline, health=self.health)

    async def add_event(self, type_: str, body: dict[str, Any]) -> None:
        await self.pipeline.add_event(type_, body)

    async def reload_config(self) -> bool:
        return await self.reloader.reload()

    def command_reader(self, verb: str) -> Callable[[AgentConfig], dict[str, Any]] | None:
        return self.command_readers.get(verb)

    async def status(self) -> dict[str, Any]:
        return await self._control_view().status()

    def device_rows(self) -> list[dict[str, Any]]:
        return self._control_view().devices()

    def _control_view(self) -> ControlServer:
        from agent.control import ControlServer

        return self.control or ControlServer(self)


def install_signal_handlers(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
