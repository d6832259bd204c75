"""`edge-agent probe serial PORT`: listen (never send) and tell which supported protocol is talking."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliExit,
    add_config_arg,
    add_json_arg,
    print_json,
)

COMMON_BAUDS = (9600, 115200, 4800, 19200, 38400, 57600)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("probe", help="identify what a device is sending (serial)")
    add_config_arg(p)
    add_json_arg(p)
    psub = p.add_subparsers(dest="probe_kind", metavar="KIND")
    s = psub.add_parser("serial", help="listen on a serial port and recognise the protocol")
    s.add_argument("port", metavar="PORT", help="serial port, e.g. /dev/serial/by-id/usb-...")
    s.add_argument("--baud", type=int, action="append", metavar="N",
                   help="baud rate to try (repeatable; default: the configured one, then common rates)")
    s.add_argument("--seconds", type=float, default=3.0, metavar="S", help="listening time per baud rate (default 3)")
    s.add_argument("--capture", metavar="FILE", type=Path,
                   help="also record what was heard (at the recognised or last baud rate), with timestamps, "
                        "for a device's `replay` key")
    add_config_arg(s)
    add_json_arg(s)
    s.set_defaults(func=_serial)
    p.set_defaults(func=_usage, probe_parser=p)


def _usage(args: argparse.Namespace) -> int:
    args.probe_parser.print_help()
    return EXIT_USAGE


def _configured_baud(args: argparse.Namespace, port: str) -> int | None:
    """The baud of a configured device on this port, if a config is readable (best effort)."""
    try:
        from agent.config import load_config

        cfg = load_config(getattr(args, "config", None))
    except Exception:
        return None
    for d in cfg.devices:
        if d.port == port and d.baud:
            return d.baud
    return None


def open_readonly(port: str, baud: int) -> int:
    """The port opened read-only (O_RDONLY: the probe cannot write), raw 8N1 at `baud`, locked."""
    import fcntl
    import os
    import termios

    speed = getattr(termios, f"B{baud}", None)
    if speed is None:
        raise CliExit(EXIT_USAGE, f"edge-agent probe: {baud} is not a standard baud rate")
    try:
        fd = os.open(port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise CliExit(EXIT_FAILURE, f"edge-agent probe: cannot open {port}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same lock pyserial's exclusive=True takes
        except BlockingIOError:
            raise CliExit(EXIT_FAILURE, f"edge-agent probe: {port} is in use (is the agent running with "
                                        "this port? stop it first)") from None
        try:
            cc = termios.tcgetattr(fd)[6]
        except termios.error:
            raise CliExit(EXIT_FAILURE, f"edge-agent probe: {port} is not a serial port") from None
        cc[termios.VMIN], cc[termios.VTIME] = 0, 0
        termios.tcsetattr(fd, termios.TCSANOW,
                          [0, 0, termios.CS8 | termios.CREAD | termios.CLOCAL, 0, speed, speed, cc])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _listen(port: str, baud: int, seconds: float, records: list[tuple[float, bytes]] | None = None) -> bytes:
    """Bytes received in `seconds` (the port is open read-only: nothing can be written to it).

    `records` gets each chunk with its wall-clock arrival time (for `--capture`)."""
    import os
    import select

    fd = open_readonly(port, baud)
    data = bytearray()
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0 and len(data) < 1_000_000:
            if not select.select([fd], [], [], min(left, 0.05))[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as e:
                raise CliExit(EXIT_FAILURE, f"edge-agent probe: {port} went away: {e.strerror}") from None
            if not chunk:  # hang-up: the device went away
                raise CliExit(EXIT_FAILURE, f"edge-agent probe: {port} went away")
            data += chunk
            if records is not None:
                records.append((time.time(), chunk))
    finally:
        os.close(fd)
    return bytes(data)


def _serial(args: argparse.Namespace) -> int:
    from drivers.probe import analyse, recognised

    if args.seconds <= 0:
        raise CliExit(EXIT_USAGE, "edge-agent probe: --seconds must be positive")
    bauds: list[int] = list(args.baud or [])
    if not bauds:
        conf = _configured_baud(args, args.port)
        bauds = ([conf] if conf else []) + [b for b in COMMON_BAUDS if b != conf]
    tried: list[dict[str, Any]] = []
    result: dict[str, Any] = {"port": args.port, "recognised": False}
    records: list[tuple[float, bytes]] = []
    for baud in bauds:
        records.clear()
        data = _listen(args.port, baud, args.seconds, records)
        cands = analyse(data)
        best = recognised(cands)
        tried.append({"baud": baud, "bytes": len(data), "best": best.protocol if best else None})
        if not args.json:
            print(f"{args.port} @ {baud} baud: {len(data)} bytes in {args.seconds:g} s"
                  + (f" -> {best.title}" if best else " -> nothing recognised"))
        if best is not None:
            result.update(recognised=True, baud=baud, bytes=len(data), **best.as_dict(),
                          others=[c.as_dict() for c in cands[1:] if c.frames])
            break
        if not data and not args.baud:
            break  # silence is not a baud problem: a wrong rate still yields (garbage) bytes
    result["tried"] = tried
    if args.capture is not None:
        from drivers.transport.replay import write_capture

        try:
            write_capture(args.capture, records)
        except OSError as e:
            raise CliExit(EXIT_FAILURE, f"edge-agent probe: cannot write {args.capture}: {e.strerror}") from None
        result["capture"] = {"path": str(args.capture), "chunks": len(records), "baud": tried[-1]["baud"]}
        if not args.json:
            print(f"capture: {len(records)} chunks at {tried[-1]['baud']} baud -> {args.capture} "
                  "(replay it with `replay = \"...\"` on a device of the driver)")
    if args.json:
        print_json(result)
    elif result["recognised"]:
        errs = ", ".join(f"{k}={v}" for k, v in sorted(result["errors"].items())) or "none"
        print(f"protocol: {result['title']}  (driver = \"{result['driver']}\", baud = {result['baud']})")
        print(f"frames: {result['frames']}   errors: {errs}" + (f"   ({result['note']})" if result["note"] else ""))
        from agent.fmt import values_text, width, wrap

        cols = width()
        for s in result["samples"]:  # `latitude=56.0434°, fix=gps`, not a Python dict
            print("\n".join(wrap(values_text(s, 10 * cols, nbsp=True), cols, indent=4, first="  ")))
        if result["errors"]:
            print("hint: some frames were damaged; check wiring, ground and cable length")
    else:
        total = sum(t["bytes"] for t in tried)
        if total == 0:
            print("no bytes received: check power, TX->RX wiring, and that the device is in an active/reporting mode"
                  " (a USB-CAN slcan adapter stays silent until opened: configure driver \"can\")")
        else:
            print("bytes arrive but no supported protocol was recognised: check the baud rate (--baud N)")
    return EXIT_OK if result["recognised"] else EXIT_FAILURE
