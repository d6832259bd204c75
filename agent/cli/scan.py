"""`edge-agent scan ble`: advertising devices, the driver that would decode each, a sample."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.cli.common import EXIT_FAILURE, CliExit, add_config_arg, add_json_arg, config_path, load, print_json, table
from agent.fmt import values_text, width, wrap

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from drivers.ble.decoders import Advert

DBUS_SOCKET = "/run/dbus/system_bus_socket"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scan", help="look for devices (BLE adverts) to put in the config")
    add_config_arg(p)
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    b = kinds.add_parser(
        "ble", help="listen to BLE adverts: address, RSSI, name, driver, decoded sample"
    )
    add_config_arg(b)
    add_json_arg(b)
    b.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    b.set_defaults(func=scan_ble)
    p.set_defaults(func=_usage(p))


def _usage(p: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    return run


@dataclass
class Seen:
    """What the scan learned about one address."""

    address: str
    name: str | None = None
    rssi: int | None = None
    adverts: int = 0
    driver: str | None = None
    sample: dict[str, Any] | None = None
    note: str = ""
    device_id: str | None = None
    manufacturer_ids: set[int] = field(default_factory=set)
    service_data: set[str] = field(default_factory=set)

    def view(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "rssi": self.rssi,
            "name": self.name,
            "adverts": self.adverts,
            "driver": self.driver,
            "configured_as": self.device_id,
            "sample": self.sample,
            "note": self.note,
            "manufacturer_ids": sorted(f"0x{m:04x}" for m in self.manufacturer_ids),
            "service_data": sorted(self.service_data),
        }


def _optional_config(args: argparse.Namespace) -> AgentConfig | None:
    """The config when one is given or present (for the adapter and bindkeys); None otherwise."""
    if getattr(args, "config", None) is None and not config_path(args).exists():
        return None
    return load(args)


def fault_words(fault: str) -> str:
    """The scanner's last fault for a person: `FileNotFoundError: [Errno 2] ...` says no D-Bus."""
    if fault.startswith(("FileNotFoundError", "ConnectionRefusedError")):
        return f"the D-Bus system bus is not running (no socket at {DBUS_SOCKET})"
    if fault.startswith("PermissionError"):
        return f"no permission on the D-Bus system bus ({DBUS_SOCKET})"
    return fault


class Collector:
    """Turns adverts into one `Seen` per address, decoding a sample with the family decoder."""

    def __init__(self, cfg: AgentConfig | None) -> None:
        self.seen: dict[str, Seen] = {}
        self.keys: dict[str, bytes] = {}
        self.ids: dict[str, str] = {}
        for d in cfg.devices if cfg else []:
            if d.address:
                self.ids[d.address.upper()] = d.id
                key = d.options.get("key")
                if isinstance(key, str):
                    self.keys[d.address.upper()] = bytes.fromhex(key)

    def __call__(self, adv: Advert) -> None:
        from drivers.ble.decoders import FAMILIES, DecodeError, identify

        s = self.seen.setdefault(
            adv.address, Seen(adv.address, device_id=self.ids.get(adv.address))
        )
        s.adverts += 1
        s.rssi = adv.rssi
        s.name = adv.name or s.name
        s.manufacturer_ids.update(adv.manufacturer_data)
        s.service_data.update(adv.service_data)
        fam = identify(adv)
        if fam is None:
            s.driver, s.note = _connectable(adv, s.name) or (s.driver, s.note)
            return
        s.driver = fam
        try:
            values = FAMILIES[fam].decode(adv, self.keys.get(adv.address))
        except DecodeError as e:
            s.note = f"cannot decode: {e}"
            return
        if values:
            s.sample = dict(values)
            s.note = ""


def _connectable(adv: Advert, name: str | None) -> tuple[str, str] | None:
    """(driver, note) for a device read over a GATT connection, known by its advertised service."""
    from drivers.registry import registry

    uuids = {u.lower() for u in adv.service_uuids}
    hints = [h for fam in registry().families.values() for h in fam.scan_hints if h.service_uuid in uuids]
    hints.sort(key=lambda h: h.name_contains is None)  # a name match is the more specific hint
    for h in hints:
        if h.name_contains is None or h.name_contains.lower() in (name or "").lower():
            return h.driver, h.note
    return None


async def _scan(cfg: AgentConfig | None, seconds: float) -> tuple[Collector, dict[str, Any]]:
    import asyncio

    from drivers.ble.scanner import BleScanner, ScannerSettings

    b = cfg.ble if cfg else None
    settings = ScannerSettings(adapter=b.adapter if b else None, scanning_mode="active")
    scanner = BleScanner(settings)
    collector = Collector(cfg)
    scanner.add_listener(collector)
    try:
        await asyncio.sleep(seconds)  # the scanner task collects in the background
    finally:
        status = scanner.status()
        await scanner.aclose()
    return collector, status


def scan_ble(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    cfg = _optional_config(args)
    if args.seconds <= 0:
        raise CliExit(2, "edge-agent scan ble: --seconds must be positive")
    logging.getLogger("drivers.ble").setLevel(logging.ERROR)  # the scanner's retries are journal talk
    collector, status = asyncio.run(_scan(cfg, args.seconds))
    rows = sorted(
        collector.seen.values(), key=lambda s: (s.driver is None, -(s.rssi or -999), s.address)
    )
    if not rows and status["state"] != "scanning":
        why = fault_words(status["last_fault"] or status["state"])
        raise CliExit(EXIT_FAILURE, f"edge-agent scan ble: BLE scanning failed: {why}\n"
                      "  is BlueZ running on the D-Bus system bus?  systemctl status bluetooth dbus\n"
                      "  `edge-agent doctor` checks the adapter (present, powered)")
    if args.json:
        print_json(
            {"seconds": args.seconds, "mode": status["mode"], "devices": [s.view() for s in rows]}
        )
        return 0
    if not rows:
        print(f"no BLE adverts heard in {args.seconds:g}s ({status['state']}).")
        return 0
    out = [[s.address, "" if s.rssi is None else str(s.rssi), (s.name or "")[:16], s.driver or "-",
            s.device_id or ""] for s in rows]
    text = table(out, ["ADDRESS", "RSSI", "NAME", "DRIVER", "CONFIGURED"]).splitlines()
    cols = width()
    print(text[0])
    for line, s in zip(text[1:], rows, strict=True):
        print(line)
        sample = values_text(s.sample, cols - 5) if s.sample else s.note
        if sample:
            print(f"    {sample}"[:cols])
    known = sum(1 for s in rows if s.driver)
    print()
    print("\n".join(wrap(f"{len(rows)} device(s), {known} with a known driver; add one as "
                         "`[[devices]] id=... driver=<DRIVER> address=<ADDRESS>`.", cols)))
    return 0
