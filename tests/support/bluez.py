# ruff: noqa: F722, F821, UP037  (dbus-fast reads D-Bus signatures from string annotations)
"""A private system-like dbus-daemon and a scripted BlueZ (dbus-fast) for bleak's real BlueZ backend.

The scripted bluetoothd owns ``org.bluez`` and behaves like the real one where bleak and the
agent depend on it:

- ``/org/bluez/hci0`` exports ``org.bluez.Adapter1`` (and ``AdvertisementMonitorManager1``
  only when ``experimental=True``, like bluetoothd without ``--experimental``, so bleak's
  ``RegisterMonitor`` gets ``UnknownMethod`` and refuses passive scanning).
- Discovery sessions are per D-Bus client: ``StartDiscovery`` twice from one client answers
  ``org.bluez.Error.InProgress``, ``StopDiscovery`` without a session ``org.bluez.Error.Failed``,
  ``StartDiscovery`` on a powered-off adapter ``org.bluez.Error.NotReady``; a client that leaves
  the bus loses its sessions and monitors; powering off ends every session (``Discovering`` false).
- Adverts reach clients only while someone discovers (or an activated monitor's or-patterns
  match): a new device is an ``InterfacesAdded`` of ``org.bluez.Device1``, later adverts are
  ``PropertiesChanged`` carrying only what changed (``DuplicateData`` off, as bleak sets it);
  when discovery ends every device's ``RSSI`` is invalidated, so the next scan hears it again.
- ``Connect`` on a GATT peripheral exports ``GattService1``/``GattCharacteristic1`` objects,
  then ``ServicesResolved``; ``StartNotify`` sets ``Notifying``; notifications are ``Value``
  ``PropertiesChanged``; a dropped link clears ``Connected``/``ServicesResolved`` and removes them.
- ``restart()`` is bluetoothd restarting: the connection closes (``org.bluez`` vanishes, no
  signals), then a fresh daemon takes the name back and re-exports an adapter with no devices.
- Fault switches: ``fail_next_start(n, error)``, ``stick()`` (bluez#807: discovery "succeeds" but
  finds nothing until the adapter is power-cycled), ``block_power`` (rfkill: ``Powered`` can't be set).

Everything runs on its own event loop in a thread; the public methods are synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import BusType, DBusError, Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

T = TypeVar("T")

BLUEZ = "org.bluez"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
MONITOR_MANAGER = "org.bluez.AdvertisementMonitorManager1"
MONITOR = "org.bluez.AdvertisementMonitor1"
GATT_SERVICE = "org.bluez.GattService1"
GATT_CHAR = "org.bluez.GattCharacteristic1"

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
JBD_SERVICE = "0000ff00-0000-1000-8000-00805f9b34fb"
JBD_NOTIFY = "0000ff01-0000-1000-8000-00805f9b34fb"
JBD_WRITE = "0000ff02-0000-1000-8000-00805f9b34fb"
# GATT layouts a peripheral can have: service -> (write characteristic, notify characteristic)
GATT_LAYOUTS = {NUS_SERVICE: (NUS_RX, NUS_TX), JBD_SERVICE: (JBD_WRITE, JBD_NOTIFY)}

_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


class DBusDaemon:
    """``dbus-daemon --config-file=<system-like config> --print-address`` on a private socket."""

    def __init__(self) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise RuntimeError("dbus-daemon is not installed (Debian package dbus-daemon)")
        self.dir = Path(tempfile.mkdtemp(prefix="dbus-"))
        self.socket = self.dir / "system_bus_socket"
        conf = self.dir / "system.conf"
        conf.write_text(_BUS_CONF.format(socket=self.socket))
        self.proc = subprocess.Popen(
            [exe, f"--config-file={conf}", "--nofork", "--nosyslog", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"dbus-daemon did not start: {err}")
        self.address = line

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def uuid16(u: int) -> str:
    return f"0000{u:04x}-0000-1000-8000-00805f9b34fb"


def dev_path(address: str, adapter: str = "hci0") -> str:
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


def ad_structures(name: str | None, manufacturer_data: Mapping[int, bytes],
                  service_data: Mapping[str, bytes], service_uuids: tuple[str, ...]) -> list[tuple[int, bytes]]:
    """The advert as (AD type, AD data) structures, for or-pattern matching."""
    out: list[tuple[int, bytes]] = []
    if name:
        out.append((0x09, name.encode()))
    for cid, data in manufacturer_data.items():
        out.append((0xFF, cid.to_bytes(2, "little") + data))
    for uuid, data in service_data.items():
        if uuid.endswith("-0000-1000-8000-00805f9b34fb") and uuid.startswith("0000"):
            out.append((0x16, int(uuid[4:8], 16).to_bytes(2, "little") + data))
        else:
            out.append((0x21, bytes.fromhex(uuid.replace("-", ""))[::-1] + data))
    long_uuids = [u for u in service_uuids if not (u.startswith("0000") and u.endswith("-0000-1000-8000-00805f9b34fb"))]
    short_uuids = [u for u in service_uuids if u not in long_uuids]
    if short_uuids:
        out.append((0x03, b"".join(int(u[4:8], 16).to_bytes(2, "little") for u in short_uuids)))
    if long_uuids:
        out.append((0x07, b"".join(bytes.fromhex(u.replace("-", ""))[::-1] for u in long_uuids)))
    return out


class _OptionalProps(ServiceInterface):
    """A ServiceInterface whose optional properties exist only once set (like BlueZ's)."""

    OPTIONAL: frozenset[str] = frozenset()

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._all_props = list(ServiceInterface._get_properties(self))
        self._present: set[str] = set()
        self._refresh()

    def _refresh(self) -> None:
        lst = ServiceInterface._get_properties(self)
        lst[:] = [p for p in self._all_props if p.name not in self.OPTIONAL or p.name in self._present]

    def present(self, name: str) -> None:
        if name not in self._present:
            self._present.add(name)
            self._refresh()

    def invalidate(self, name: str) -> None:
        """Drop an optional property, announced as invalidated (PropertiesChanged)."""
        if name in self._present:
            self._present.discard(name)
            self._refresh()
            self.emit_properties_changed({}, [name])


class Adapter1(ServiceInterface):
    def __init__(self, bluez: ScriptedBlueZ, address: str) -> None:
        super().__init__(ADAPTER)
        self.bluez = bluez
        self.address = address
        self.powered = True
        self.discovering = False

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> "s":
        return self.address

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> "s":
        return "public"

    @dbus_property(PropertyAccess.READ)
    def Name(self) -> "s":
        return "scripted-bluez"

    @dbus_property(PropertyAccess.READ)
    def Alias(self) -> "s":
        return "scripted-bluez"

    @dbus_property(PropertyAccess.READ)
    def Class(self) -> "u":
        return 0

    @dbus_property()
    def Powered(self) -> "b":
        return self.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: "b"):  # type: ignore[no-untyped-def]
        self.bluez._set_powered(bool(value))

    @dbus_property(PropertyAccess.READ)
    def Discoverable(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def Pairable(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def Discovering(self) -> "b":
        return self.discovering

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> "as":
        return [uuid16(0x1800), uuid16(0x1801)]

    @dbus_property(PropertyAccess.READ)
    def Modalias(self) -> "s":
        return "usb:v1D6Bp0246d0548"

    @dbus_property(PropertyAccess.READ)
    def Roles(self) -> "as":
        return ["central", "peripheral"]

    # Start/StopDiscovery, SetDiscoveryFilter and RemoveDevice need the caller's unique name;
    # ScriptedBlueZ._on_message answers them before this interface is consulted.


class MonitorManager1(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(MONITOR_MANAGER)

    @dbus_property(PropertyAccess.READ)
    def SupportedMonitorTypes(self) -> "as":
        return ["or_patterns"]

    @dbus_property(PropertyAccess.READ)
    def SupportedFeatures(self) -> "as":
        return []


class Device1(_OptionalProps):
    OPTIONAL = frozenset({"Name", "RSSI", "ManufacturerData", "ServiceData"})

    def __init__(self, bluez: ScriptedBlueZ, address: str, adapter_path: str) -> None:
        self.bluez = bluez
        self.address = address
        self.adapter_path = adapter_path
        self.local_name: str | None = None
        self.rssi = 0
        self.mfr: dict[int, bytes] = {}
        self.svc: dict[str, bytes] = {}
        self.uuids: list[str] = []
        self.connected = False
        self.resolved = False
        super().__init__(DEVICE)

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> "s":
        return self.address

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> "s":
        return "public"

    @dbus_property(PropertyAccess.READ)
    def Name(self) -> "s":
        return self.local_name or ""

    @dbus_property(PropertyAccess.READ)
    def Alias(self) -> "s":
        return self.local_name or self.address.replace(":", "-")

    @dbus_property(PropertyAccess.READ)
    def Paired(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def Bonded(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def Trusted(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def Blocked(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def LegacyPairing(self) -> "b":
        return False

    @dbus_property(PropertyAccess.READ)
    def RSSI(self) -> "n":
        return self.rssi

    @dbus_property(PropertyAccess.READ)
    def Connected(self) -> "b":
        return self.connected

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> "as":
        return self.uuids

    @dbus_property(PropertyAccess.READ)
    def Adapter(self) -> "o":
        return self.adapter_path

    @dbus_property(PropertyAccess.READ)
    def ManufacturerData(self) -> "a{qv}":
        return {k: Variant("ay", v) for k, v in self.mfr.items()}

    @dbus_property(PropertyAccess.READ)
    def ServiceData(self) -> "a{sv}":
        return {k: Variant("ay", v) for k, v in self.svc.items()}

    @dbus_property(PropertyAccess.READ)
    def ServicesResolved(self) -> "b":
        return self.resolved

    @dbus_method()
    def Connect(self):
        self.bluez._connect(self)

    @dbus_method()
    def Disconnect(self):
        self.bluez._disconnect(self)


class GattService1(ServiceInterface):
    def __init__(self, uuid: str, device: str) -> None:
        super().__init__(GATT_SERVICE)
        self.uuid, self.device = uuid, device

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> "s":
        return self.uuid

    @dbus_property(PropertyAccess.READ)
    def Device(self) -> "o":
        return self.device

    @dbus_property(PropertyAccess.READ)
    def Primary(self) -> "b":
        return True

    @dbus_property(PropertyAccess.READ)
    def Includes(self) -> "ao":
        return []


class GattCharacteristic1(ServiceInterface):
    def __init__(self, uuid: str, service: str, flags: list[str], mtu: int) -> None:
        super().__init__(GATT_CHAR)
        self.uuid, self.service, self.flags, self.mtu = uuid, service, flags, mtu
        self.value = b""
        self.notifying = False
        self.written: list[bytes] = []
        self.on_write: Callable[[bytes], None] | None = None

    @dbus_property(PropertyAccess.READ)
    def UUID(self) -> "s":
        return self.uuid

    @dbus_property(PropertyAccess.READ)
    def Service(self) -> "o":
        return self.service

    @dbus_property(PropertyAccess.READ)
    def Value(self) -> "ay":
        return self.value

    @dbus_property(PropertyAccess.READ)
    def Notifying(self) -> "b":
        return self.notifying

    @dbus_property(PropertyAccess.READ)
    def Flags(self) -> "as":
        return self.flags

    @dbus_property(PropertyAccess.READ)
    def MTU(self) -> "q":
        return self.mtu

    @dbus_method()
    def ReadValue(self, options: "a{sv}") -> "ay":
        return self.value

    @dbus_method()
    def WriteValue(self, value: "ay", options: "a{sv}"):
        self.written.append(bytes(value))
        if self.on_write is not None:
            self.on_write(bytes(value))

    @dbus_method()
    def StartNotify(self):
        if "notify" not in self.flags:
            raise DBusError("org.bluez.Error.NotSupported", "Operation is not supported")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})

    @dbus_method()
    def StopNotify(self):
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})


@dataclass
class Peripheral:
    """A radio device in the room (outlives bluetoothd restarts)."""

    address: str
    name: str | None = None
    gatt: bool = False  # connectable peripheral with the GATT service below
    mtu: int = 23
    connects: int = 0
    service: str = NUS_SERVICE  # a key of GATT_LAYOUTS
    # Answers what the central writes: bytes -> reply, sent as notifications of at most mtu - 3 bytes.
    responder: Callable[[bytes], bytes] | None = None
    written: list[bytes] = field(default_factory=list)  # every write, over all connections


@dataclass
class _Monitor:
    sender: str
    path: str
    patterns: list[tuple[int, int, bytes]] = field(default_factory=list)
    active: bool = False


class ScriptedBlueZ:
    """bluetoothd on a private bus; see the module docstring for what it imitates."""

    def __init__(self, bus_address: str, *, experimental: bool = False, adapter: str = "hci0",
                 powered: bool = True) -> None:
        self.bus_address = bus_address
        self.experimental = experimental
        self.adapter_name = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.initial_powered = powered
        self.block_power = False
        self.peripherals: dict[str, Peripheral] = {}
        self.calls: list[tuple[str, str]] = []  # (member, sender) of every adapter/monitor call
        self.restarts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scripted-bluez", daemon=True)
        self._thread.start()
        self._bus: MessageBus | None = None
        self._reset_state()
        self._call(self._up())

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()

        return self._call(wrap())

    def _reset_state(self) -> None:
        self.adapter: Adapter1 | None = None
        self.devices: dict[str, Device1] = {}
        self.gatt: dict[str, list[tuple[str, ServiceInterface]]] = {}
        self.sessions: set[str] = set()
        self.filters: dict[str, dict[str, Any]] = {}
        self.monitors: list[_Monitor] = []
        self.fail_start: list[str] = []
        self.stuck = False

    async def _up(self) -> None:
        self._reset_state()
        bus = await MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM).connect()
        self._bus = bus
        bus.add_message_handler(self._on_message)
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                               body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"]))
        await bus.request_name(BLUEZ)
        # Like bluetoothd: the name first, then the adapter appears (InterfacesAdded).
        self.adapter = Adapter1(self, "00:1A:7D:DA:71:13")
        self.adapter.powered = self.initial_powered
        bus.export(self.adapter_path, self.adapter)
        if self.experimental:
            bus.export(self.adapter_path, MonitorManager1())

    async def _down(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()
            self._bus = None

    # -- public API (called from the test thread) ---------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._down())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def restart(self, down_for: float = 0.3) -> None:
        """bluetoothd restarts: org.bluez vanishes (no signals), then returns with no devices."""
        self._call(self._down())
        time.sleep(down_for)  # the daemon is down: nobody owns org.bluez
        self.restarts += 1
        self._call(self._up())

    def stop_daemon(self) -> None:
        self._call(self._down())

    def start_daemon(self) -> None:
        self._call(self._up())

    def add_peripheral(self, address: str, name: str | None = None, *, gatt: bool = False, mtu: int = 23,
                       service: str = NUS_SERVICE, responder: Callable[[bytes], bytes] | None = None) -> Peripheral:
        p = Peripheral(address.upper(), name, gatt, mtu, service=service, responder=responder)
        self.peripherals[p.address] = p
        return p

    def advertise(self, address: str, *, name: str | None = None, rssi: int = -60,
                  manufacturer_data: Mapping[int, bytes] | None = None,
                  service_data: Mapping[str, bytes] | None = None,
                  service_uuids: tuple[str, ...] = ()) -> bool:
        """One advertising event; True when BlueZ passed it on to D-Bus clients."""
        addr = address.upper()
        p = self.peripherals.get(addr) or self.add_peripheral(addr, name)
        return self._run(lambda: self._advert(p, name or p.name, rssi, dict(manufacturer_data or {}),
                                              dict(service_data or {}), tuple(service_uuids)))

    def fail_next_start(self, n: int = 1, error: str = "org.bluez.Error.InProgress") -> None:
        self._run(lambda: self.fail_start.extend([error] * n))

    def stick(self) -> None:
        """Discovery keeps 'succeeding' but finds nothing until the adapter is power-cycled."""
        self._run(lambda: setattr(self, "stuck", True))

    def power(self, on: bool) -> None:
        """Someone else (rfkill, bluetoothctl) switches the adapter."""
        self._run(lambda: self._set_powered(on, force=True))

    @property
    def discovering(self) -> bool:
        return self._run(lambda: bool(self.adapter and self.adapter.discovering))

    @property
    def powered(self) -> bool:
        return self._run(lambda: bool(self.adapter and self.adapter.powered))

    def session_count(self) -> int:
        return self._run(lambda: len(self.sessions))

    def active_monitors(self) -> list[list[tuple[int, int, bytes]]]:
        return self._run(lambda: [m.patterns for m in self.monitors if m.active])

    def count_calls(self, member: str) -> int:
        return self._run(lambda: sum(1 for m, _ in self.calls if m == member))

    def notifying(self, address: str) -> bool:
        def get() -> bool:
            tx = self._notify_char(address.upper())
            return tx is not None and tx.notifying
        return self._run(get)

    def connected(self, address: str) -> bool:
        return self._run(lambda: bool((d := self.devices.get(address.upper())) and d.connected))

    def notify(self, address: str, data: bytes) -> bool:
        """The peripheral sends one notification on its notify characteristic (NUS TX, JBD FF01)."""
        def send() -> bool:
            tx = self._notify_char(address.upper())
            if tx is None or not tx.notifying:
                return False
            tx.value = bytes(data)
            tx.emit_properties_changed({"Value": tx.value})
            return True
        return self._run(send)

    def drop_link(self, address: str) -> None:
        """The peripheral goes out of range / resets: the LE link drops."""
        self._run(lambda: self._link_lost(address.upper()))

    def written(self, address: str) -> list[bytes]:
        return self._run(lambda: list(c.written) if (c := self._write_char(address.upper())) else [])

    # -- behaviour (event-loop thread) --------------------------------------------------------
    def _advert(self, p: Peripheral, name: str | None, rssi: int, mfr: dict[int, bytes],
                svc: dict[str, bytes], uuids: tuple[str, ...]) -> bool:
        a = self.adapter
        if a is None or self._bus is None or not a.powered or self.stuck:
            return False
        if not self.sessions:
            ads = ad_structures(name, mfr, svc, uuids)
            if not any(m.active and _matches(m.patterns, ads) for m in self.monitors):
                return False
        path = dev_path(p.address, self.adapter_name)
        dev = self.devices.get(p.address)
        if dev is None:
            dev = Device1(self, p.address, self.adapter_path)
            dev.local_name, dev.rssi, dev.mfr, dev.svc = name, rssi, dict(mfr), dict(svc)
            dev.uuids = list(uuids)
            for prop, val in (("Name", name), ("RSSI", True), ("ManufacturerData", mfr), ("ServiceData", svc)):
                if val:
                    dev.present(prop)
            self.devices[p.address] = dev
            self._bus.export(path, dev)
            return True
        changed: dict[str, Any] = {}
        if name and name != dev.local_name:
            dev.local_name = name
            dev.present("Name")
            changed["Name"] = name
            changed["Alias"] = name
        if rssi != dev.rssi or "RSSI" not in dev._present:
            dev.rssi = rssi
            dev.present("RSSI")
            changed["RSSI"] = rssi
        new_mfr = {**dev.mfr, **mfr}  # BlueZ accumulates entries per company id
        if new_mfr != dev.mfr:
            dev.mfr = new_mfr
            dev.present("ManufacturerData")
            changed["ManufacturerData"] = dev.ManufacturerData
        new_svc = {**dev.svc, **svc}
        if new_svc != dev.svc:
            dev.svc = new_svc
            dev.present("ServiceData")
            changed["ServiceData"] = dev.ServiceData
        new_uuids = sorted(set(dev.uuids) | set(uuids))
        if new_uuids != sorted(dev.uuids):
            dev.uuids = new_uuids
            changed["UUIDs"] = new_uuids
        if changed:
            dev.emit_properties_changed(changed)
        return True

    def _set_powered(self, on: bool, force: bool = False) -> None:
        a = self.adapter
        assert a is not None
        if self.block_power and not force:
            raise DBusError("org.bluez.Error.Failed", "Blocked through rfkill")
        if on == a.powered:
            return
        a.powered = on
        changed: dict[str, Any] = {"Powered": on}
        if not on:
            self.sessions.clear()
            self.stuck = False  # the controller is reset
            for dev in list(self.devices.values()):
                if dev.connected:
                    self._link_lost(dev.address)
            if a.discovering:
                a.discovering = False
                changed["Discovering"] = False
                for d in self.devices.values():
                    d.invalidate("RSSI")
        a.emit_properties_changed(changed)

    def _update_discovering(self) -> None:
        a = self.adapter
        if a is None:
            return
        want = bool(self.sessions)
        if a.discovering != want:
            a.discovering = want
            if not want:  # like discovery_cleanup(): RSSI of every device is invalidated
                for d in self.devices.values():
                    d.invalidate("RSSI")
            a.emit_properties_changed({"Discovering": want})

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.body and msg.body[2] == "":
                gone = msg.body[0]
                if gone in self.sessions:
                    self.sessions.discard(gone)
                    self._update_discovering()
                self.monitors = [m for m in self.monitors if m.sender != gone]
            return None
        if msg.message_type != MessageType.METHOD_CALL or msg.path != self.adapter_path:
            return None
        if msg.interface == ADAPTER and msg.member in ("StartDiscovery", "StopDiscovery", "SetDiscoveryFilter", "RemoveDevice"):
            self.calls.append((msg.member, msg.sender or ""))
            return self._adapter_call(msg)
        if msg.interface == MONITOR_MANAGER and self.experimental:
            self.calls.append((msg.member, msg.sender or ""))
            return self._monitor_call(msg)
        return None

    def _adapter_call(self, msg: Message) -> Message:
        a = self.adapter
        assert a is not None
        sender = msg.sender or ""
        if msg.member == "SetDiscoveryFilter":
            self.filters[sender] = dict(msg.body[0])
            return Message.new_method_return(msg)
        if msg.member == "RemoveDevice":
            path = msg.body[0]
            for addr in list(self.devices):
                if dev_path(addr, self.adapter_name) == path:
                    self._remove_device(addr)
                    return Message.new_method_return(msg)
            return Message.new_error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist")
        if msg.member == "StartDiscovery":
            if not a.powered:
                return Message.new_error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
            if self.fail_start:
                err = self.fail_start.pop(0)
                return Message.new_error(msg, err, "Operation already in progress")
            if sender in self.sessions:
                return Message.new_error(msg, "org.bluez.Error.InProgress", "Operation already in progress")
            self.sessions.add(sender)
            self._update_discovering()
            return Message.new_method_return(msg)
        # StopDiscovery
        if not a.powered:
            return Message.new_error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
        if sender not in self.sessions:
            return Message.new_error(msg, "org.bluez.Error.Failed", "No discovery started")
        self.sessions.discard(sender)
        self._update_discovering()
        return Message.new_method_return(msg)

    def _monitor_call(self, msg: Message) -> Message:
        sender = msg.sender or ""
        if msg.member == "RegisterMonitor":
            path = msg.body[0]
            if any(m.sender == sender and m.path == path for m in self.monitors):
                return Message.new_error(msg, "org.bluez.Error.AlreadyExists", "Already Exists")
            mon = _Monitor(sender, path)
            self.monitors.append(mon)
            self._loop.create_task(self._activate(mon))
            return Message.new_method_return(msg)
        if msg.member == "UnregisterMonitor":
            path = msg.body[0]
            before = len(self.monitors)
            self.monitors = [m for m in self.monitors if not (m.sender == sender and m.path == path)]
            if len(self.monitors) == before:
                return Message.new_error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist")
            return Message.new_method_return(msg)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", f"unknown method {msg.member}")

    async def _activate(self, mon: _Monitor) -> None:
        """Read the client's monitor (exported right after RegisterMonitor returns) and activate it."""
        bus = self._bus
        deadline = time.monotonic() + 5
        while bus is not None and time.monotonic() < deadline and mon in self.monitors:
            reply = await bus.call(Message(destination=mon.sender, path=mon.path,
                                           interface="org.freedesktop.DBus.Properties", member="GetAll",
                                           signature="s", body=[MONITOR]))
            if reply is not None and reply.message_type == MessageType.METHOD_RETURN and reply.body[0]:
                props = reply.body[0]
                if props["Type"].value != "or_patterns" or not props["Patterns"].value:
                    return  # BlueZ rejects such a monitor (it calls Release)
                mon.patterns = [(int(s), int(t), bytes(c)) for s, t, c in props["Patterns"].value]
                await bus.call(Message(destination=mon.sender, path=mon.path, interface=MONITOR,
                                       member="Activate"))
                mon.active = True
                return
            await asyncio.sleep(0.02)

    def _connect(self, dev: Device1) -> None:
        a = self.adapter
        assert a is not None and self._bus is not None
        if not a.powered:
            raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
        p = self.peripherals.get(dev.address)
        if p is None or not p.gatt:
            raise DBusError("org.bluez.Error.Failed", "le-connection-abort-by-local")
        if dev.connected:
            return
        p.connects += 1
        dev.connected = True
        dev.emit_properties_changed({"Connected": True})
        base = dev_path(dev.address, self.adapter_name)
        svc_path = f"{base}/service000a"
        write_uuid, notify_uuid = GATT_LAYOUTS[p.service]
        rx = GattCharacteristic1(write_uuid, svc_path, ["write", "write-without-response"], p.mtu)
        tx = GattCharacteristic1(notify_uuid, svc_path, ["notify"], p.mtu)
        rx.on_write = lambda data: self._on_write(p, tx, data)
        objs: list[tuple[str, ServiceInterface]] = [
            (svc_path, GattService1(p.service, base)),
            (f"{svc_path}/char000b", rx),
            (f"{svc_path}/char000d", tx),
        ]
        for path, obj in objs:
            self._bus.export(path, obj)
        self.gatt[dev.address] = objs
        dev.resolved = True
        dev.emit_properties_changed({"ServicesResolved": True})

    def _disconnect(self, dev: Device1) -> None:
        if dev.connected:
            self._link_lost(dev.address)

    def _link_lost(self, address: str) -> None:
        dev = self.devices.get(address)
        if dev is None or not dev.connected:
            return
        dev.resolved = False
        dev.emit_properties_changed({"ServicesResolved": False})
        for path, _ in reversed(self.gatt.pop(address, [])):
            if self._bus is not None:
                self._bus.unexport(path)
        dev.connected = False
        dev.emit_properties_changed({"Connected": False})

    def _remove_device(self, address: str) -> None:
        self._link_lost(address)
        self.devices.pop(address, None)
        if self._bus is not None:
            self._bus.unexport(dev_path(address, self.adapter_name))

    def _on_write(self, p: Peripheral, tx: GattCharacteristic1, data: bytes) -> None:
        """A device answering a write: its reply split over notifications, as the radio carries it."""
        p.written.append(data)
        if p.responder is None:
            return
        reply, size = p.responder(data), p.mtu - 3
        for i in range(0, len(reply), size):
            if tx.notifying:
                tx.value = reply[i:i + size]
                tx.emit_properties_changed({"Value": tx.value})

    def _notify_char(self, address: str) -> GattCharacteristic1 | None:
        p = self.peripherals.get(address)
        return self._char(address, GATT_LAYOUTS[p.service if p else NUS_SERVICE][1])

    def _write_char(self, address: str) -> GattCharacteristic1 | None:
        p = self.peripherals.get(address)
        return self._char(address, GATT_LAYOUTS[p.service if p else NUS_SERVICE][0])

    def _char(self, address: str, uuid: str) -> GattCharacteristic1 | None:
        for _, obj in self.gatt.get(address, []):
            if isinstance(obj, GattCharacteristic1) and obj.uuid == uuid:
                return obj
        return None


def _matches(patterns: list[tuple[int, int, bytes]], ads: list[tuple[int, bytes]]) -> bool:
    """BlueZ or_patterns: any pattern whose AD type has `content` at `start`."""
    for start, ad_type, content in patterns:
        for t, data in ads:
            if t == ad_type and data[start:start + len(content)] == content:
                return True
    return False




def bus_env(daemon: DBusDaemon) -> dict[str, str]:
    """Environment for an agent subprocess talking to the private bus."""
    return {**os.environ, **daemon.env}
