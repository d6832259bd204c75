"""`edge-agent status`, `devices` and `tail`: the running agent, seen through its control socket."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.cli.common import (
    EXIT_AT_RISK,
    EXIT_BUFFERING,
    EXIT_DEGRADED,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    CliExit,
    add_config_arg,
    add_json_arg,
    print_json,
)
from agent.cli.control_client import ControlClient, ask, target, unreachable_exit
from agent.errors import AgentNotReachable, AgentRefused, AgentWentAway, ControlError
from agent.fmt import NBSP, age, count, paint, size, values_text, width, words, wrap


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
    st = ask(target(args), "status")
    if args.json:
        print_json(st)
    else:
        print(render_status(st, width()))
    return status_code(st)


def status_code(st: dict[str, Any]) -> int:
    """0 healthy; else the most severe of 5 (buffer cannot write), 4 (uplink down), 3 (degraded)."""
    if st["buffer"].get("writer", "ok") not in ("ok", None):
        return EXIT_AT_RISK
    if st["uplink"]["state"] != "connected":
        return EXIT_BUFFERING
    offline = any(d.get("state") == "offline" for d in (st.get("devices") or {}).values())
    if offline or st.get("clock") != "synced":
        return EXIT_DEGRADED
    return EXIT_OK


def render_status(st: dict[str, Any], cols: int = 80) -> str:
    from agent.model import parse_ts

    up, buf = st["uplink"], st["buffer"]
    out: list[str] = []

    def add(text: str, label: str = "", style: str = "", indent: int = 10) -> None:
        """A labelled line folded to the terminal width; `style` paints it whole."""
        for line in wrap(text, cols, indent=indent, first=f"{label:<10}" if label else ""):
            out.append(paint(line, style) if style else line)

    add(f"{st['gateway']}  edge-agent {st['version']}  pid {st['pid']}  "
        f"up {age(st['uptime'])} since {st['started'][:19]}Z")
    clock = st["clock"]
    add(clock if clock == "synced"
        else f"{clock} (readings are stamped clock=unsynced; see `edge-agent doctor`)",
        "clock", "" if clock == "synced" else "warn")
    state = up["state"]
    now = parse_ts(st["ts"])

    def ago(ts: str | None) -> str:
        return "never" if not ts else f"{age(now - parse_ts(ts))} ago"

    if state == "connected":
        add(f"connected to {up['broker']}{' (TLS)' if up.get('tls') else ''} "
            f"since {up['connected_since']} ({ago(up['connected_since'])})", "uplink")
    else:
        err = words(up["last_error"]) if up["last_error"] else "not connected yet"
        add(f"{state.upper()}  broker {up['broker']}: {err}", "uplink", "fail")
    if up.get("backoff_until"):
        left = max(0.0, parse_ts(up["backoff_until"]) - now)
        add(f"retry in {age(left)} at {up['backoff_until'][11:19]}Z, or now: "
            "`edge-agent uplink reconnect`", " ")
    add(f"last PUBACK {ago(up['last_puback'])}; {count(up['readings_acked'])} readings acked, "
        f"{up['reconnects']} reconnects, {up['inflight']} in flight", " ")
    pct = 100.0 * buf["bytes"] / buf["max_bytes"] if buf["max_bytes"] else 0.0
    add(f"{count(buf['depth'])} readings waiting, {size(buf['bytes'])} of "
        f"{size(buf['max_bytes'])} ({pct:.1f}%), oldest {age(buf['oldest_age'])}", "buffer")
    ttf = "-" if buf["time_to_full"] is None else age(buf["time_to_full"])
    add(f"accepting {buf['accept_rate']:g}/s, full in {ttf}; next seq {buf['next_seq']}, "
        f"epoch {buf['epoch']}", " ")
    dropped = {k: v for k, v in (buf.get("dropped") or {}).items() if v}
    drops = ", ".join(f"{v} ({k})" for k, v in dropped.items()) or "none"
    extra = []
    if buf.get("writer") == "disk_full":
        extra.append("DISK FULL: readings wait in memory")
    elif buf.get("writer") == "locked":
        extra.append("LOCKED by another process (a sqlite3 shell?): readings wait in memory")
    elif buf.get("writer") in ("read_only", "io_error", "corrupt"):
        what = {"read_only": "READ-ONLY FILESYSTEM", "io_error": "DISK I/O ERRORS", "corrupt": "DATABASE DAMAGED"}
        extra.append(f"{what[buf['writer']]} ({buf.get('writer_detail', '')}): readings wait in memory")
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
            text += (f"; CONFIRMING config.apply {cmds['applying']['jti']} "
                     f"since {ago(cmds['applying']['since'])}")
        add(f"{text} (`edge-agent commands`)", "commands", "warn" if cmds["applying"] else "")
    add(drops + (("; " + "; ".join(extra)) if extra else ""), "drops",
        "fail" if buf.get("writer", "ok") != "ok" else "" if drops == "none" else "warn")
    drivers = st.get("drivers") or {}
    if not drivers:
        add("none configured", "devices")
    for i, (name, d) in enumerate(sorted(drivers.items())):
        parts = [f"{d['online']}/{d['devices']} online"]
        for k in ("offline", "starting", "disabled"):
            if d[k]:
                parts.append(f"{d[k]} {k}")
        parts.append(f"{count(d['readings'])} readings, {d['errors']} errors")
        add(f"{name:<12} " + ", ".join(parts), "drivers" if i == 0 else " ",
            "warn" if d["offline"] else "ok")
    # Verdicts a technician acts on.
    if state != "connected":
        add(f"! DATA IS BUFFERING: uplink to {up['broker']} down; {count(buf['depth'])} "
            "readings kept, sent when it reconnects. Why: `edge-agent doctor`; "
            "carry out: `edge-agent buffer export`", style="fail", indent=2)
    offline = [
        (dev_id, dev)
        for dev_id, dev in (st.get("devices") or {}).items()
        if dev.get("state", "offline") == "offline"
    ]
    if offline:
        add(f"! {len(offline)} device(s) not delivering: "
            + ", ".join(f"{i} (link {d['link']})" for i, d in offline)
            + "; see `edge-agent devices`", style="warn", indent=2)
    return "\n".join(out)


# -- devices ------------------------------------------------------------------------------
def devices(args: argparse.Namespace) -> int:
    rows = ask(target(args), "devices")["devices"]
    if args.json:
        print_json({"devices": rows})
        return 0
    print(render_devices(rows, width()))
    return 0


HEADER = ["DEVICE", "DRIVER", "STATE", "LINK", "LAST", "RATE", "ERRORS"]
MIN_VALUES = 16  # narrower than this, LAST VALUES goes on a line of its own under the row


def render_devices(rows: list[dict[str, Any]], cols: int = 80) -> str:
    if not rows:
        return "no devices configured (add [[devices]] to the config)"
    style = {"online": "ok", "offline": "fail", "starting": "warn", "disabled": "dim"}
    body = []
    for d in rows:
        errs = " ".join(f"{k}={v}" for k, v in sorted(d["errors"].items())) or "0"
        if d.get("restarts"):
            errs += f" restarts={d['restarts']}"
        body.append([d["id"], d["driver"], d["state"], d["link"], age(d["last_reading_age"]),
                     f"{d['rate']:g}/s", errs])
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    used = sum(widths) + 2 * len(widths)
    inline = cols - used >= MIN_VALUES

    def line(cells: list[str], tail: str) -> str:
        return ("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + tail).rstrip()

    out = [line(HEADER, "LAST VALUES" if inline else "")]
    for d, cells in zip(rows, body, strict=True):
        values = d["last_values"]
        text = line(cells, values_text(values, cols - used) if inline and values else "")
        # colour after alignment, so widths stay right
        out.append(text.replace(f" {d['state']} ", " " + paint(d["state"], style.get(d["state"], "")) + " ", 1))
        if values and not inline:
            out.append("  " + values_text(values, cols - 3))
    notes = []
    for d in rows:
        if d["state"] in ("offline", "starting") or d["link"] in ("disconnected", "failed"):
            where = d.get("port") or d.get("address") or ""
            why = words(d.get("link_detail") or d.get("last_error") or "")
            exp = d.get("expected_interval")
            seen = "never" if d["last_reading_age"] is None else f"{age(d['last_reading_age'])} ago"
            if where and why.startswith(f"cannot open {where}"):  # the port once, not twice
                why = why.replace(f" {where}", "", 1)
            text = (f"{d['id']}: {d['state']}, link {d['link']}{(' ' + where) if where else ''}"
                    f"{(': ' + why) if why and why != where else ''}; last reading {seen}"
                    + (f" (expected every {exp:g}s)" if exp else ""))
            notes += wrap(text, cols, indent=4, first="  ")
    if notes:
        out.append("")
        out.append(paint("not delivering:", "warn"))
        out.extend(notes)
        out += wrap("check cabling and power; `edge-agent doctor` checks ports and the Bluetooth adapter",
                    cols, indent=4, first="  ")
    return "\n".join(out)


# -- tail ---------------------------------------------------------------------------------
def device_event_text(ev: dict[str, Any]) -> str:
    """`van-gnss is offline since 07:49:36Z (never delivered; link disconnected: ...)`."""
    state, dev = ev["state"], ev["device"]
    since = f" since {ev['since'][11:19]}Z" if ev.get("since") else ""
    last = ev.get("last_reading")
    why = [f"last reading {last[11:19]}Z" if last else "no reading yet"]
    if ev.get("link") and ev["link"] != "connected":
        detail = words(ev.get("detail") or "")
        why.append(f"link {ev['link']}" + (f": {detail}" if detail else ""))
    if state == "online":
        return f"{dev} is online{since}"
    if state == "starting":
        return f"{dev} is starting: waiting for its first reading ({'; '.join(why[1:]) or 'link up'})"
    return f"{dev} is {state}{since} ({'; '.join(why)})"


def tail(args: argparse.Namespace) -> int:
    t = target(args)
    seen = 0
    client = ControlClient(t.socket)
    cols, tty = width(), sys.stdout.isatty()
    try:
        client.connect()
        client.subscribe(args.device)
        print(
            paint(
                f"following readings{' of ' + args.device if args.device else ''} live from "
                f"{t.gateway} via {t.socket} (Ctrl-C to stop)",
                "dim",
            ),
            file=sys.stderr,
            flush=True,
        )
        for ev in client.events():
            kind = ev.get("event")
            if kind == "dropped":
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
            if kind == "device":
                text = json.dumps(ev) if args.json else paint(
                    device_event_text(ev), "ok" if ev["state"] == "online" else "warn")
                print(text, file=sys.stderr, flush=True)
                continue
            if kind != "reading":
                continue
            r = ev["reading"]
            if args.json:
                sys.stdout.write(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n")
            else:
                head = f"{r['ts'][11:23]} {r['seq']:>7} {r['device']} "
                text = values_text(r["values"], 10 * cols, nbsp=True)
                text += "" if r["clock"] == "synced" else " [clock unsynced]"
                # folded on a terminal only: piped, one reading stays one line (grep, awk)
                lines = wrap(text, cols, indent=len(head), first=head) if tty else [head + text.replace(NBSP, " ")]
                sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                return 0
    except AgentNotReachable as e:
        if seen or isinstance(e, AgentWentAway):
            raise CliExit(EXIT_UNREACHABLE, f"edge-agent tail: the agent went away ({e})") from None
        raise unreachable_exit(t, e) from None
    except ControlError as e:
        raise CliExit(EXIT_FAILURE, f"edge-agent tail: {refused(e)}") from None
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    return 0


def refused(e: ControlError) -> str:
    """The agent's refusal in words (an unknown device names the configured ones)."""
    if isinstance(e, AgentRefused) and e.code == "unknown_device":
        return e.message
    return f"the agent refused: {e}"
