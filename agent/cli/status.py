"""`edge-agent status`, `devices` and `tail`: the running agent, seen through its control socket."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    CliExit,
    add_config_arg,
    add_json_arg,
    load,
    print_json,
    table,
)
from agent.cli.control_client import ControlClient, ask, unreachable_exit
from agent.cli.fmt import age, count, paint, size, values_text
from agent.errors import AgentNotReachable, ControlError
from agent.model import parse_ts


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="is data leaving? uplink, buffer, clock and device health of the running agent",
        description="Ask the running agent how it is: "
        "uplink state (connected, last PUBACK, backoff), "
        "buffer depth/bytes/oldest age/time to full, drops, clock, per-driver health. "
        "Exit 69 when no agent answers on the control socket.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=status)
    d = sub.add_parser(
        "devices",
        help="one row per configured device: state, link, last reading, rate, errors, values",
        description="Find a dead sensor: every configured device with its driver, "
        "link state, age of "
        "the last reading, reading rate, error counters and last values.",
    )
    add_config_arg(d)
    add_json_arg(d)
    d.set_defaults(func=devices)
    t = sub.add_parser(
        "tail",
        help="follow readings live as the agent accepts them",
        description="Print each reading as it is committed to the buffer (Ctrl-C to stop).",
    )
    add_config_arg(t)
    t.add_argument("--device", metavar="ID", help="only this device")
    t.add_argument(
        "--json",
        action="store_true",
        help="one wire-form reading (JSON) per line, as sent on P/telemetry",
    )
    t.add_argument("--count", "-n", type=int, metavar="N", help="stop after N readings")
    t.set_defaults(func=tail)


# -- status -------------------------------------------------------------------------------
def status(args: argparse.Namespace) -> int:
    cfg = load(args)
    st = ask(cfg, "status")
    if args.json:
        print_json(st)
        return 0
    print(render_status(st))
    return 0


def render_status(st: dict[str, Any]) -> str:
    up, buf = st["uplink"], st["buffer"]
    lines = [
        paint(f"{st['gateway']}", "bold") + f"  edge-agent {st['version']}  pid {st['pid']}  "
        f"up {age(st['uptime'])} (since {st['started']})"
    ]
    clock = st["clock"]
    lines.append(
        f"clock     {paint(clock, 'ok' if clock == 'synced' else 'warn')}"
        + (
            ""
            if clock == "synced"
            else "  (readings are stamped clock=unsynced; see `edge-agent doctor`)"
        )
    )
    state = up["state"]
    now = parse_ts(st["ts"])

    def ago(ts: str | None) -> str:
        return "never" if not ts else f"{age(now - parse_ts(ts))} ago"

    puback = ago(up["last_puback"])
    if state == "connected":
        lines.append(
            f"uplink    {paint('connected', 'ok')} to {up['broker']}"
            f"{' (TLS)' if up.get('tls') else ''} since {up['connected_since']} "
            f"({ago(up['connected_since'])})"
        )
    else:
        err = up["last_error"] or "not connected yet"
        lines.append(f"uplink    {paint(state.upper(), 'fail')}  broker {up['broker']}: {err}")
        if up.get("backoff_until"):
            lines.append(
                "          backing off: next attempt in "
                f"{age(max(0.0, parse_ts(up['backoff_until']) - now))}"
            )
    lines.append(
        f"          last PUBACK {puback}; published {count(up['published'])} batches, "
        f"acked {count(up['readings_acked'])} readings, reconnects {up['reconnects']}, "
        f"in flight {up['inflight']}"
    )
    pct = 100.0 * buf["bytes"] / buf["max_bytes"] if buf["max_bytes"] else 0.0
    lines.append(
        f"buffer    {count(buf['depth'])} readings waiting, {size(buf['bytes'])} of "
        f"{size(buf['max_bytes'])} ({pct:.1f}%), oldest {age(buf['oldest_age'])}"
    )
    ttf = "-" if buf["time_to_full"] is None else age(buf["time_to_full"])
    lines.append(
        f"          accepting {buf['accept_rate']:g}/s, full in {ttf}; next seq {buf['next_seq']}, "
        f"epoch {buf['epoch']}"
    )
    dropped = {k: v for k, v in (buf.get("dropped") or {}).items() if v}
    drops = ", ".join(f"{v} ({k})" for k, v in dropped.items()) or "none"
    extra = []
    if buf.get("writer") == "disk_full":
        extra.append(paint("DISK FULL: readings wait in memory", "fail"))
    elif buf.get("writer") == "locked":
        extra.append(paint("LOCKED by another process (a sqlite3 shell?): readings wait in memory", "fail"))
    elif buf.get("writer") in ("read_only", "io_error", "corrupt"):
        what = {"read_only": "READ-ONLY FILESYSTEM", "io_error": "DISK I/O ERRORS", "corrupt": "DATABASE DAMAGED"}
        extra.append(paint(f"{what[buf['writer']]} ({buf.get('writer_detail', '')}): readings wait in memory", "fail"))
    if buf.get("rejected"):
        extra.append(f"rejected {buf['rejected']} (buffer full, on_full=reject_new)")
    if buf.get("queue_overflow"):
        extra.append(f"queue overflow {buf['queue_overflow']}")
    if (cmds := st.get("commands")) is not None:
        last = cmds["last"]
        text = f"on (keys {', '.join(cmds['trusted_kids'])}); last: " + (
            "none" if last is None else f"{last['cmd']} {last['status']}"
            f"{' (' + last['reason'] + ')' if last['reason'] else ''} by {last['kid']} {ago(last['ts'])}")
        if cmds["applying"]:
            text += "; " + paint(f"CONFIRMING config.apply {cmds['applying']['jti']} "
                                 f"since {ago(cmds['applying']['since'])}", "warn")
        lines.append(f"commands  {text}  (`edge-agent commands`)")
    lines.append(
        f"drops     {paint(drops, 'ok' if drops == 'none' else 'warn')}"
        + (("; " + "; ".join(extra)) if extra else "")
    )
    drivers = st.get("drivers") or {}
    if not drivers:
        lines.append("devices   none configured")
    for i, (name, d) in enumerate(sorted(drivers.items())):
        parts = [f"{d['online']}/{d['devices']} online"]
        for k in ("offline", "starting", "disabled"):
            if d[k]:
                parts.append(f"{d[k]} {k}")
        parts.append(f"{count(d['readings'])} readings, {d['errors']} errors")
        text = f"{name:<12} " + ", ".join(parts)
        lines.append(
            ("drivers   " if i == 0 else "          ")
            + paint(text, "warn" if d["offline"] else "ok")
        )
    # Verdicts a technician acts on.
    if state != "connected":
        lines.append(
            paint(
                f"! DATA IS BUFFERING: the uplink to {up['broker']} is down "
                f"({up['last_error'] or state}); {count(buf['depth'])} readings are kept and "
                "will be sent when it reconnects. Check with `edge-agent doctor`; "
                "carry data out with `edge-agent buffer export`.",
                "fail",
            )
        )
    offline = [
        (dev_id, dev)
        for dev_id, dev in (st.get("devices") or {}).items()
        if dev.get("state", "offline") == "offline"
    ]
    if offline:
        lines.append(
            paint(
                f"! {len(offline)} device(s) not delivering: "
                + ", ".join(f"{i} (link {d['link']})" for i, d in offline)
                + "; see `edge-agent devices`",
                "warn",
            )
        )
    return "\n".join(lines)


# -- devices ------------------------------------------------------------------------------
def devices(args: argparse.Namespace) -> int:
    cfg = load(args)
    rows = ask(cfg, "devices")["devices"]
    if args.json:
        print_json({"devices": rows})
        return 0
    print(render_devices(rows))
    return 0


def render_devices(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no devices configured (add [[devices]] to the config)"
    style = {"online": "ok", "offline": "fail", "starting": "warn", "disabled": "dim"}
    body = []
    for d in rows:
        errs = " ".join(f"{k}={v}" for k, v in sorted(d["errors"].items())) or "0"
        if d.get("restarts"):
            errs += f" restarts={d['restarts']}"
        body.append(
            [
                d["id"],
                d["driver"],
                d["state"],
                d["link"],
                age(d["last_reading_age"]),
                f"{d['rate']:g}/s",
                errs,
                values_text(d["last_values"]),
            ]
        )
    text = table(
        body, ["DEVICE", "DRIVER", "STATE", "LINK", "LAST", "RATE", "ERRORS", "LAST VALUES"]
    )
    out = text.splitlines()
    for i, d in enumerate(rows, start=1):  # colour after alignment, so widths stay right
        out[i] = out[i].replace(
            f" {d['state']} ", " " + paint(d["state"], style.get(d["state"], "")) + " ", 1
        )
    notes = []
    for d in rows:
        if d["state"] in ("offline", "starting") or d["link"] in ("disconnected", "failed"):
            where = d.get("port") or d.get("address") or ""
            why = d.get("link_detail") or d.get("last_error") or ""
            exp = d.get("expected_interval")
            seen = "never" if d["last_reading_age"] is None else f"{age(d['last_reading_age'])} ago"
            notes.append(
                f"  {d['id']}: {d['state']}, link {d['link']}{(' ' + where) if where else ''}"
                f"{(': ' + why) if why and why != where else ''}; last reading {seen}"
                + (f" (expected every {exp:g}s)" if exp else "")
            )
    if notes:
        out.append("")
        out.append(paint("not delivering:", "warn"))
        out.extend(notes)
        out.append(
            "  check cabling and power; `edge-agent doctor` checks ports and the Bluetooth adapter"
        )
    return "\n".join(out)


# -- tail ---------------------------------------------------------------------------------
def tail(args: argparse.Namespace) -> int:
    cfg = load(args)
    if args.device is not None and args.device not in {d.id for d in cfg.devices}:
        raise CliExit(
            EXIT_FAILURE,
            f"edge-agent tail: no device {args.device!r} in {cfg.source_path} "
            f"(configured: {', '.join(d.id for d in cfg.devices) or 'none'})",
        )
    seen = 0
    client = ControlClient(Path(cfg.control.socket))
    try:
        client.connect()
        client.subscribe(args.device)
        print(
            paint(
                f"following readings{' of ' + args.device if args.device else ''} live from "
                f"{cfg.gateway.id} via {cfg.control.socket} (Ctrl-C to stop)",
                "dim",
            ),
            file=sys.stderr,
            flush=True,
        )
        for ev in client.events():
            if ev.get("event") == "dropped":
                note = {"event": "dropped", "count": ev["count"]}
                print(
                    json.dumps(note)
                    if args.json
                    else paint(
                        f"… {ev['count']} readings skipped (this terminal reads too slowly)", "warn"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if ev.get("event") != "reading":
                continue
            r = ev["reading"]
            if args.json:
                sys.stdout.write(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(
                    f"{r['ts']}  {r['seq']:>8}  {r['device']} ({r['driver']})  "
                    f"{values_text(r['values'], 200)}"
                    + ("" if r["clock"] == "synced" else "  [clock unsynced]")
                    + "\n"
                )
            sys.stdout.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                return 0
    except AgentNotReachable as e:
        if seen or "closed" in str(e):
            raise CliExit(EXIT_UNREACHABLE, f"edge-agent tail: the agent went away ({e})") from None
        raise unreachable_exit(cfg, e) from None
    except ControlError as e:
        raise CliExit(EXIT_FAILURE, f"edge-agent tail: the agent refused: {e}") from None
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    return 0
