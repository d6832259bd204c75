"""The one long-lived BLE scanner (bleak, BlueZ backend) shared by every BLE driver, self-healing.

Owned by the agent as ``Agent.services["ble"]`` (created only when a BLE device is configured).
Drivers ``subscribe`` by address (or by family); the scanner turns bleak's callbacks into
``Advert`` values and dispatches them, dropping identical repeats and enforcing each
subscription's ``min_interval`` so a chatty tag cannot flood the buffer.

Passive scanning (BlueZ AdvertisementMonitor1 with or-patterns per family) is tried first when
``scanning_mode`` is ``auto`` or ``passive``; BlueZ without ``--experimental`` refuses it, and
the scanner falls back to active scanning, logs a warning and reports it in ``status()``.

Self-healing ladder, for: every configured device silent longer than its expected interval,
``org.bluez.Error.InProgress``, "No powered Bluetooth adapters", the adapter switching off or
discovery stopping under us, or bluetoothd restarting (``org.bluez`` leaving and returning):
  1. restart the scanner;
  2. if that did not help, power-cycle the adapter over D-Bus (``Adapter1.Powered``);
  3. then report unhealthy (``healthy`` is False, for the systemd watchdog) and keep retrying
     with backoff. Any advert from a configured device afterwards resets the ladder.
A single dead tag does not trigger the ladder while other configured tags are heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from drivers.ble.hub import AdvertHub, ScannerState, Subscription
from edge_common.backoff import Backoff

if TYPE_CHECKING:
    from bleak import BleakScanner
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData
    from dbus_fast.aio import MessageBus

    from drivers.ble.decoders import Advert
    from edge_common.device import DeviceConfig

log = logging.getLogger(__name__)


def _quiet_dead_bus_writes(loop: asyncio.AbstractEventLoop) -> None:
    """Log dbus-fast's unawaited write futures on a closed bus at DEBUG, not as asyncio ERRORs.

    Dropping bleak's bus after a bluetoothd restart fails the writes still queued on it
    (BrokenPipeError); dbus-fast keeps them in futures nobody awaits, and asyncio would report
    each one as "Future exception was never retrieved" in the journal.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "_edge_agent_dbus", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and "never retrieved" in context.get("message", "")
            and any("dbus_fast" in f.f_code.co_filename for f, _ in _tb_frames(exc))
        ):
            log.debug("BLE: a D-Bus write on a closed connection failed: %r", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._edge_agent_dbus = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def _tb_frames(exc: BaseException) -> Iterable[tuple[Any, int]]:
    import traceback

    return traceback.walk_tb(exc.__traceback__)

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"



def family_patterns(family: str) -> tuple[tuple[int, int, bytes], ...]:
    """BlueZ or-patterns (start, AD type, content) that select a family's adverts (its descriptor's)."""
    from drivers.registry import registry

    return registry().ble_patterns(family)


def ble_family(driver: str) -> str | None:
    """The BLE family (scanner subscription key) of a driver name, or None for a non-BLE driver."""
    from drivers.registry import registry

    reg = registry()
    r = reg.drivers.get(driver)
    return r.family.name if r is not None and r.family.ble_patterns else None


class ScannerConfig(Protocol):
    """What `BleScanner.from_config` reads of the agent's config (`[ble]` is read if present)."""

    @property
    def devices(self) -> Sequence[DeviceConfig]: ...


ScanMode = Literal["auto", "active", "passive"]


@dataclass(frozen=True, slots=True)
class ScannerSettings:
    """Scanner knobs (the `[ble]` config section)."""

    adapter: str | None = None  # "hci0"; None: the first powered adapter
    scanning_mode: ScanMode = "auto"
    restart_delay: float = 2.0  # pause before a scanner restart (first ladder step)
    bluez_timeout: float = 60.0  # org.bluez gone longer than this -> unhealthy
    check_interval: float = 1.0  # how often silence is checked


def _dbus_error(e: BaseException) -> str:
    return str(getattr(e, "dbus_error", "") or "")


def _is_passive_refusal(e: BaseException) -> bool:
    """BlueZ cannot do passive scanning here (no --experimental, no monitor offload...)."""
    return "passive scanning" in str(e) or _dbus_error(e) in {
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.bluez.Error.NotSupported",
        "org.bluez.Error.Failed",
        "org.bluez.Error.InvalidArguments",
    }


def describe_error(e: BaseException) -> str:
    """One line for logs and status."""
    name = _dbus_error(e)
    if name:
        details = getattr(e, "dbus_error_details", None)
        return f"{name}" + (f": {details}" if details else "")
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class BleScanner(AdvertHub):
    """The shared scanner service (see module docstring)."""

    def __init__(
        self, settings: ScannerSettings | None = None, families: Iterable[str] = ()
    ) -> None:
        self.settings = settings or ScannerSettings()
        self.families: set[str] = set(families)
        super().__init__()
        self._listeners: list[Callable[[Advert], None]] = []
        self._bluez_listeners: list[Callable[[bool], None]] = []
        self._devices: dict[str, BLEDevice] = {}
        self._device_seen: dict[str, asyncio.Event] = {}
        self._scanner: BleakScanner | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch_bus: MessageBus | None = None
        self._fault = asyncio.Event()
        self._fault_reason: str | None = None
        self._reconfigure = False
        self._bluez_present: bool | None = None
        self._bluez_back = asyncio.Event()
        self._adapter_path: str | None = None
        self._passive_refused: str | None = None
        self._step = 0
        self._healing = False  # a fault was handled and nothing has proven the recovery yet
        self._scan_started = time.monotonic()
        # status
        self.state: ScannerState = ScannerState.STOPPED
        self.mode: Literal["active", "passive"] | None = None
        self.healthy = True
        self.unhealthy_reason = ""
        self.adverts = 0
        self.restarts = 0
        self.power_cycles = 0
        self.faults = 0
        self.last_fault = ""
        self.recoveries = 0

    @classmethod
    def from_config(cls, cfg: ScannerConfig) -> BleScanner:
        """Settings from `[ble]`, passive patterns from the configured BLE drivers."""
        b = getattr(cfg, "ble", None)
        settings = (
            ScannerSettings()
            if b is None
            else ScannerSettings(
                adapter=b.adapter,
                scanning_mode=b.scanning_mode,
                restart_delay=b.restart_delay,
                bluez_timeout=b.bluez_timeout,
            )
        )
        fams = {fam for d in cfg.devices if d.enabled and (fam := ble_family(d.driver)) is not None}
        return cls(settings, fams)

    # -- consumers ------------------------------------------------------------------------
    def subscribed(self, sub: Subscription) -> None:
        """A new subscription starts scanning (and widens the passive monitor to its family)."""
        family = sub.family
        if family and family not in self.families:
            self.families.add(family)
            if self.mode == "passive":  # the running monitor does not match this family yet
                self._reconfigure = True
                self._fault.set()
        self.start()

    def add_listener(self, fn: Callable[[Advert], None]) -> Callable[[], None]:
        """Every advert, undeduplicated (the `scan ble` verb); returns the remover."""
        self._listeners.append(fn)
        self.start()
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def add_bluez_listener(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        """fn(False) when bluetoothd leaves the bus, fn(True) when back; returns the remover."""
        self._bluez_listeners.append(fn)
        return lambda: self._bluez_listeners.remove(fn) if fn in self._bluez_listeners else None

    def ble_device(self, address: str) -> BLEDevice | None:
        return self._devices.get(address.upper())

    async def wait_for_device(self, address: str, timeout: float) -> BLEDevice | None:  # noqa: ASYNC109
        """The BLEDevice for `address` once it has advertised (None after `timeout`)."""
        addr = address.upper()
        if addr in self._devices:
            return self._devices[addr]
        ev = self._device_seen.setdefault(addr, asyncio.Event())
        self.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await ev.wait()
        return self._devices.get(addr)

    @property
    def scanning(self) -> bool:
        return self.state == ScannerState.SCANNING

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            loop = asyncio.get_running_loop()
            _quiet_dead_bus_writes(loop)
            self._task = loop.create_task(self._run(), name="ble-scanner")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._stop_scanner()
        if self._watch_bus is not None:
            self._watch_bus.disconnect()
            self._watch_bus = None
        self.state = ScannerState.STOPPED

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "state": self.state,
            "mode": self.mode,
            "requested_mode": self.settings.scanning_mode,
            "passive_refused": self._passive_refused,
            "healthy": self.healthy,
            "unhealthy_reason": self.unhealthy_reason,
            "adapter": self._adapter_path,
            "adverts": self.adverts,
            "restarts": self.restarts,
            "power_cycles": self.power_cycles,
            "faults": self.faults,
            "last_fault": self.last_fault,
            "recoveries": self.recoveries,
            "devices": {a: s.view(now) for a, lst in self._subs.items() for s in lst[:1]},
        }

    # -- adverts --------------------------------------------------------------------------
    def _on_detect(self, device: BLEDevice, data: AdvertisementData) -> None:
        from drivers.ble.decoders import Advert

        addr = device.address.upper()
        now = time.monotonic()
        self.adverts += 1
        self._devices[addr] = device
        ev = self._device_seen.pop(addr, None)
        if ev is not None:
            ev.set()
        adv = Advert(
            address=addr,
            name=data.local_name,
            rssi=data.rssi,
            manufacturer_data=dict(data.manufacturer_data),
            service_data=dict(data.service_data),
            service_uuids=tuple(data.service_uuids),
        )
        for fn in list(self._listeners):
            try:
                fn(adv)
            except Exception:
                log.exception("BLE advert listener failed")
        self.dispatch(adv, now)
        if self._healing and addr in self._subs:
            self._recovered()

    def _recovered(self) -> None:
        self._step = 0
        self._healing = False
        self.recoveries += 1
        if not self.healthy:
            log.warning("BLE scanner healthy again")
        else:
            log.info("BLE scanner recovered (%s)", self.last_fault)
        self.healthy = True
        self.unhealthy_reason = ""

    # -- the supervisor -------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff(max(0.1, self.settings.restart_delay), 60.0)
        while True:
            reason: str | None
            try:
                await self._ensure_watch()
                if self._bluez_present is False:
                    await self._wait_bluez()
                await self._start_scanner()
                if self._healing and not self._expecting():
                    self._recovered()
                reason = await self._wait_fault()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reason = describe_error(e)
                if (
                    not isinstance(e, OSError | TimeoutError)
                    and not _dbus_error(e)
                    and "bleak" not in type(e).__module__
                ):
                    log.exception("BLE scanner: unexpected error")
            await self._stop_scanner()
            if reason is None:  # reconfiguration, not a fault
                continue
            await self._heal(reason, backoff)

    def _expecting(self) -> bool:
        """True when some configured device has an expected interval (silence is detectable)."""
        return any(s.expected_interval for lst in self._subs.values() for s in lst)

    async def _start_scanner(self) -> None:
        from bleak import BleakScanner
        from bleak.args.bluez import BlueZScannerArgs, OrPattern, OrPatternLike
        from bleak.assigned_numbers import AdvertisementDataType

        self.state = ScannerState.STARTING
        self._fault.clear()
        self._fault_reason = None
        self._reconfigure = False
        adapter: BlueZScannerArgs = (
            {"adapter": self.settings.adapter} if self.settings.adapter else {}
        )
        patterns = [
            OrPattern(s, AdvertisementDataType(t), c)
            for fam in sorted(self.families)
            for s, t, c in family_patterns(fam)
        ]
        want_passive = (
            self.settings.scanning_mode in ("auto", "passive") and patterns and not self._listeners
        )
        scanner: BleakScanner | None = None
        if want_passive and self._passive_refused is None:
            try:
                scanner = BleakScanner(
                    self._on_detect,
                    scanning_mode="passive",
                    bluez=BlueZScannerArgs(or_patterns=list[OrPatternLike](patterns), **adapter),
                )
                await scanner.start()
                self.mode = "passive"
            except Exception as e:
                if not _is_passive_refusal(e):
                    raise
                self._passive_refused = describe_error(e)
                log.warning(
                    "BLE: BlueZ refused passive scanning (%s); falling back to active scanning",
                    self._passive_refused,
                )
                scanner = None
        if scanner is None:
            scanner = BleakScanner(self._on_detect, scanning_mode="active", bluez=adapter)
            await scanner.start()
            self.mode = "active"
        self._scanner = scanner
        self._adapter_path = (
            f"/org/bluez/{self.settings.adapter}"
            if self.settings.adapter
            else await self._default_adapter()
        )
        self._scan_started = time.monotonic()
        self.state = ScannerState.SCANNING
        log.info(
            "BLE scanner running: %s scanning on %s%s",
            self.mode,
            self._adapter_path,
            f" (passive refused: {self._passive_refused})"
            if self.mode == "active" and want_passive
            else "",
        )

    async def _stop_scanner(self) -> None:
        s, self._scanner = self._scanner, None
        if s is not None:
            self.state = ScannerState.STOPPING
            try:
                async with asyncio.timeout(5):
                    await s.stop()
            except Exception as e:
                log.debug("BLE scanner stop: %s", describe_error(e))

    async def _wait_fault(self) -> str | None:
        """Block while scanning is fine; return why it is not (None: reconfigure)."""
        interval = self.settings.check_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._fault.wait()
            if self._fault.is_set():
                return (
                    None if self._reconfigure and self._fault_reason is None else self._fault_reason
                )
            silent = self._silence()
            if silent:
                return silent

    def _silence(self) -> str | None:
        now = time.monotonic()
        subs = [s for lst in self._subs.values() for s in lst if s.expected_interval]
        if not subs:
            return None
        for s in subs:
            assert s.expected_interval is not None
            last = max(s.last_heard or 0.0, self._scan_started)
            if now - last <= s.expected_interval:
                return None
        worst = max(now - max(s.last_heard or 0.0, self._scan_started) for s in subs)
        return f"no advert from any of {len(subs)} configured device(s) for {worst:.0f}s"

    def _set_fault(self, reason: str) -> None:
        if self.state == ScannerState.SCANNING and not self._fault.is_set():
            self._fault_reason = reason
            self._fault.set()

    async def _heal(self, reason: str, backoff: Backoff) -> None:
        self.faults += 1
        self.last_fault = reason
        self.state = ScannerState.RECOVERING
        self._healing = True
        if self._bluez_present is False:
            log.warning("BLE: %s; waiting for bluetoothd", reason)
            return  # _run waits for org.bluez, then restarts the scanner (first step)
        step = self._step
        self._step += 1
        if step == 0:
            log.warning("BLE: %s; restarting the scanner", reason)
            await asyncio.sleep(self.settings.restart_delay)
        elif step == 1:
            log.warning("BLE: %s after a scanner restart; power-cycling the adapter", reason)
            await self._power_cycle()
        else:
            if self.healthy:
                self.healthy = False
                self.unhealthy_reason = f"{reason} (after scanner restart and adapter power-cycle)"
                log.error("BLE unhealthy: %s", self.unhealthy_reason)
            await asyncio.sleep(backoff.next())
            if step % 2 == 0:
                await self._power_cycle()
        self.restarts += 1

    # -- D-Bus watch: org.bluez owner, adapter Powered/Discovering ------------------------
    async def _ensure_watch(self) -> None:
        if self._watch_bus is not None and self._watch_bus.connected:
            return
        from dbus_fast import BusType, Message
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        bus.add_message_handler(self._on_signal)
        for rule in (
            f"type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BLUEZ}'",
            f"type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',arg0='{ADAPTER_IFACE}'",
        ):
            await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=[BLUEZ],
            )
        )
        self._bluez_present = bool(reply and reply.body and reply.body[0])
        if self._bluez_present:
            self._bluez_back.set()
        self._watch_bus = bus

    def _on_signal(self, msg: Any) -> None:
        if msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == BLUEZ:
            present = bool(msg.body[2])
            if present == self._bluez_present:
                return
            self._bluez_present = present
            if present:
                log.warning("BLE: bluetoothd is back on the bus")
                self._passive_refused = None  # the new daemon may have other features
                self._bluez_back.set()
            else:
                log.warning("BLE: bluetoothd left the bus (org.bluez vanished)")
                self._bluez_back.clear()
                self._devices.clear()  # their D-Bus objects died with the daemon
                self._reset_bleak_manager()
                self._fault_reason = "bluetoothd left the bus"
                self._fault.set()
            for fn in list(self._bluez_listeners):
                try:
                    fn(present)
                except Exception:
                    log.exception("BLE bluez listener failed")
        elif msg.member == "PropertiesChanged" and msg.path == self._adapter_path and msg.body:
            changed = msg.body[1]
            if "Powered" in changed and not changed["Powered"].value:
                self._set_fault("adapter powered off")
            elif (
                "Discovering" in changed
                and not changed["Discovering"].value
                and self.mode == "active"
            ):
                self._set_fault("adapter stopped discovering")

    def _reset_bleak_manager(self) -> None:
        """Make bleak forget its BlueZ object cache (it never hears a crashed bluetoothd go).

        Closing the manager's bus runs bleak's own bus-loss handling: cached objects are dropped,
        connected clients get their disconnected callback, and the next use reconnects and
        re-reads GetManagedObjects from the new daemon.
        """
        try:
            from bleak.backends.bluezdbus.manager import _global_instances

            mgr = _global_instances.get(asyncio.get_running_loop())
            bus = getattr(mgr, "_bus", None)
            if bus is not None and bus.connected:
                bus.disconnect()
        except Exception as e:  # bleak internals moved: scanning still restarts, just less cleanly
            log.debug("could not reset bleak's BlueZ manager: %s", e)

    async def _wait_bluez(self) -> None:
        self.state = ScannerState.WAITING_FOR_BLUETOOTHD
        self.mode = None
        try:
            async with asyncio.timeout(self.settings.bluez_timeout):
                await self._bluez_back.wait()
        except TimeoutError:
            if self.healthy:
                self.healthy = False
                self.unhealthy_reason = (
                    f"bluetoothd absent for more than {self.settings.bluez_timeout:.0f}s"
                )
                log.error("BLE unhealthy: %s", self.unhealthy_reason)
            await self._bluez_back.wait()

    async def _default_adapter(self) -> str | None:
        try:
            from bleak.backends.bluezdbus.manager import get_global_bluez_manager

            mgr = await get_global_bluez_manager()
            return mgr.get_default_adapter()
        except Exception:
            return await self._any_adapter()

    async def _any_adapter(self) -> str | None:
        """First Adapter1 object, powered or not (for power-cycling)."""
        from dbus_fast import Message

        bus = self._watch_bus
        if bus is None:
            return None
        reply = await bus.call(
            Message(
                destination=BLUEZ,
                path="/",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
        if reply is None or reply.message_type.name != "METHOD_RETURN":
            return None
        paths = sorted(p for p, ifaces in reply.body[0].items() if ADAPTER_IFACE in ifaces)
        return paths[0] if paths else None

    async def _set_powered(self, path: str, on: bool) -> str | None:
        from dbus_fast import Message, Variant

        assert self._watch_bus is not None
        reply = await self._watch_bus.call(
            Message(
                destination=BLUEZ,
                path=path,
                interface="org.freedesktop.DBus.Properties",
                member="Set",
                signature="ssv",
                body=[ADAPTER_IFACE, "Powered", Variant("b", on)],
            )
        )
        if reply is None or reply.message_type.name == "ERROR":
            detail = reply.body[0] if reply and reply.body else ""
            return f"{reply.error_name if reply else 'no reply'}: {detail}"
        return None

    async def _power_cycle(self) -> bool:
        """Adapter1.Powered off, then on. False (and logged) when BlueZ refuses."""
        try:
            await self._ensure_watch()
            path = (
                f"/org/bluez/{self.settings.adapter}" if self.settings.adapter else None
            ) or await self._any_adapter()
            if path is None:
                log.error("BLE: no Bluetooth adapter to power-cycle")
                return False
            self.power_cycles += 1
            err = await self._set_powered(path, False)
            if err is None:
                await asyncio.sleep(0.5)
                err = await self._set_powered(path, True)
            if err is not None:
                log.error("BLE: power-cycling %s failed: %s", path, err)
                return False
            log.warning("BLE: adapter %s power-cycled", path)
            await asyncio.sleep(0.5)
            return True
        except Exception as e:
            log.error("BLE: power-cycling the adapter failed: %s", describe_error(e))
            return False
