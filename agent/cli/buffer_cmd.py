"""`edge-agent buffer stats|export`: the SQLite outbox, read-only, whether the agent runs or not."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CliExit,
    add_config_arg,
    add_json_arg,
    load,
    print_json,
)
from agent.fmt import age, count, paint, size

if TYPE_CHECKING:
    import sqlite3

    from agent.config import AgentConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "buffer",
        help="inspect or export the readings waiting in the buffer (works with the agent stopped)",
        description="Read the buffer database read-only: nothing is changed or removed, "
        "whether the agent runs or not.",
    )
    add_config_arg(p)
    bsub = p.add_subparsers(dest="buffer_verb", metavar="ACTION")
    s = bsub.add_parser(
        "stats",
        help="depth, bytes, oldest reading, per-device counts, drops",
        description="Statistics of the buffer database, read directly from SQLite (read-only).",
    )
    add_config_arg(s)
    add_json_arg(s)
    s.set_defaults(func=stats)
    e = bsub.add_parser(
        "export",
        help="write the readings still waiting in the buffer to a file (e.g. a USB stick)",
        description="Export readings not yet acknowledged by the broker. "
        "They stay in the buffer and "
        "are still sent when the uplink returns. TIME is RFC 3339 (2026-11-27T07:00:00Z; "
        "UTC when no offset), a date (2026-11-27) or an age (90m, 2h, 3d = that long ago); "
        "compared with each reading's ts: --since inclusive, --until exclusive.",
    )
    add_config_arg(e)
    e.add_argument("--since", metavar="TIME", help="only readings at or after TIME")
    e.add_argument("--until", metavar="TIME", help="only readings before TIME")
    e.add_argument("--device", metavar="ID", help="only this device")
    e.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default="jsonl",
        help="jsonl: one wire-form reading per line, byte-identical to P/telemetry; "
        "csv: one row per reading, one column per quantity (default: jsonl)",
    )
    e.add_argument(
        "--output", "-o", metavar="FILE", help="write to FILE (default: standard output)"
    )
    e.add_argument("--json", action="store_true", help="the same as --format jsonl")
    e.set_defaults(func=export)
    p.set_defaults(
        func=lambda a: (_ for _ in ()).throw(
            CliExit(
                EXIT_USAGE, "usage: edge-agent buffer {stats,export} [--config PATH] (see --help)"
            )
        )
    )


# -- opening ------------------------------------------------------------------------------
def open_readonly(path: Path) -> tuple[sqlite3.Connection, bool]:
    """(connection, snapshot_only): mode=ro, or immutable=1 when the folder is read-only."""
    import sqlite3
    from urllib.parse import quote

    if not path.exists():
        raise CliExit(
            EXIT_FAILURE,
            f"edge-agent buffer: no buffer database at {path} "
            "(the agent creates it on first start; see [buffer].path)",
        )
    base = "file:" + quote(str(path.resolve()))
    last: Exception | None = None
    for params, snapshot in (("mode=ro", False), ("mode=ro&immutable=1", True)):
        db = sqlite3.connect(f"{base}?{params}", uri=True, timeout=5.0)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("SELECT count(*) FROM meta").fetchone()
            return db, snapshot
        except sqlite3.DatabaseError as e:
            db.close()
            last = e
            if e.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_ERROR, sqlite3.SQLITE_NOTADB):  # no outbox, not SQLite
                break
    raise CliExit(
        EXIT_FAILURE,
        f"edge-agent buffer: cannot read {path}: {last} "
        "(run `edge-agent doctor` to check the database)",
    )


def agent_running(cfg: AgentConfig) -> bool | None:
    """Whether an agent answers on the control socket; None when this user may not ask it."""
    import errno
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(cfg.control.socket))
        return True
    except OSError as e:
        return None if e.errno in (errno.EACCES, errno.EPERM) else False
    finally:
        s.close()


def running_text(running: bool | None) -> str:
    if running is None:
        return paint("state unknown (no permission on the control socket; `edge-agent status` says why)",
                     "warn")
    return paint("running", "ok") if running else paint("not running", "warn")


# -- stats --------------------------------------------------------------------------------
def buffer_stats(cfg: AgentConfig) -> dict[str, Any]:
    """Everything `buffer stats` shows, from the database alone."""
    import sqlite_utils  # here, not at import: every `edge-agent run` loads this module

    from agent.buffer import ROW_OVERHEAD
    from agent.model import format_ts

    path = Path(cfg.buffer.path)
    conn, snapshot = open_readonly(path)
    try:

        db = sqlite_utils.Database(conn)
        now = time.time()
        meta = {r["key"]: r["value"] for r in db.query("SELECT key, value FROM meta")}
        tables = set(db.table_names())
        if "segments" in tables:  # layout v2 (agent.buffer); the `outbox` view has one row per reading
            tables.add("outbox")
            agg: dict[str, Any] = next(db.query(
                "SELECT coalesce(sum(s.hi - coalesce(c.live, s.lo) + 1), 0) AS n, "
                "coalesce(sum(coalesce(c.bytes, s.bytes)), 0) AS b, "
                "min(coalesce(c.live, s.lo)) AS lo, max(s.hi) AS hi, min(s.ts) AS t0, max(s.ts) AS t1 "
                "FROM segments s LEFT JOIN cuts c ON c.lo = s.lo"))
        else:
            agg = (
                next(
                    db.query(
                        "SELECT count(*) AS n, coalesce(sum(length(payload)), 0) AS b, "
                        "min(seq) AS lo, max(seq) AS hi, "
                        "min(ts) AS t0, max(ts) AS t1 FROM outbox"
                    )
                )
                if "outbox" in tables
                else {"n": 0, "b": 0, "lo": None, "hi": None, "t0": None, "t1": None}
            )
        devices = (
            {
                r["device"]: {
                    "count": r["n"],
                    "oldest": format_ts(r["t0"]),
                    "newest": format_ts(r["t1"]),
                }
                for r in db.query(
                    "SELECT device, count(*) AS n, min(ts) AS t0, max(ts) AS t1 FROM outbox "
                    "GROUP BY device ORDER BY device"
                )
            }
            if "outbox" in tables
            else {}
        )
        dropped = (
            {
                r["reason"]: r["n"]
                for r in db.query("SELECT reason, sum(count) AS n FROM drops GROUP BY reason")
            }
            if "drops" in tables
            else {}
        )
        last_drops = (
            [
                {
                    "ts": format_ts(r["ts"]),
                    "reason": r["reason"],
                    "from_seq": r["from_seq"],
                    "to_seq": r["to_seq"],
                    "count": r["count"],
                }
                for r in db.query("SELECT * FROM drops ORDER BY id DESC LIMIT 5")
            ]
            if "drops" in tables
            else []
        )
        events = db["events"].count if "events" in tables else 0
    finally:
        conn.close()
    file_bytes = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    nbytes = int(agg["b"]) + (0 if "segments" in tables else ROW_OVERHEAD * int(agg["n"]))
    quarantined = sorted(
        str(p)
        for p in path.parent.glob(f"{path.name}.corrupt-*")
        if not p.name.endswith(("-wal", "-shm"))
    )
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "agent_running": agent_running(cfg),
        "snapshot_only": snapshot,
        "gateway": meta.get("gateway"),
        "epoch": meta.get("epoch"),
        "created": format_ts(float(meta["created"])) if meta.get("created") else None,
        "schema_version": int(meta.get("schema_version", "0")),
        "depth": agg["n"],
        "bytes": nbytes,
        "max_bytes": cfg.buffer.max_bytes,
        "fill": round(nbytes / cfg.buffer.max_bytes, 4) if cfg.buffer.max_bytes else None,
        "first_seq": agg["lo"],
        "last_seq": agg["hi"],
        # the newest row implies it; meta.next_seq is written only when no row does (see Outbox)
        "next_seq": max(int(meta.get("next_seq", "1")), (agg["hi"] or 0) + 1),
        "oldest": agg["t0"] and format_ts(agg["t0"]),
        "newest": agg["t1"] and format_ts(agg["t1"]),
        "oldest_age": None if agg["t0"] is None else round(now - agg["t0"], 1),
        "max_age": cfg.buffer.max_age,
        "on_full": cfg.buffer.on_full,
        "devices": devices,
        "dropped": dropped,
        "rejected": int(meta.get("rejected", "0")),
        "recent_drops": last_drops,
        "events_pending": events,
        "quarantined": quarantined,
    }


def stats(args: argparse.Namespace) -> int:
    cfg = load(args)
    st = buffer_stats(cfg)
    if args.json:
        print_json(st)
        return 0
    pct = f" ({100 * st['fill']:.1f}%)" if st["fill"] is not None else ""
    lines = [
        f"buffer    {st['path']} ({size(st['file_bytes'])} on disk), agent "
        + running_text(st["agent_running"]),
        f"epoch     {st['epoch']} (gateway {st['gateway']}, created {st['created']})",
        f"waiting   {count(st['depth'])} readings, {size(st['bytes'])} of "
        f"{size(st['max_bytes'])}{pct}"
        + ("" if not st["depth"] else f", seq {st['first_seq']}..{st['last_seq']}"),
        f"oldest    {st['oldest'] or '-'}"
        + (
            ""
            if st["oldest_age"] is None
            else f" ({age(st['oldest_age'])} ago; max_age {age(st['max_age'])})"
        ),
        f"next seq  {st['next_seq']}",
    ]
    dropped = {k: v for k, v in st["dropped"].items() if v}
    lines.append(
        "dropped   "
        + (
            paint(", ".join(f"{v} ({k})" for k, v in dropped.items()), "warn")
            if dropped
            else "none"
        )
        + (f"; rejected {st['rejected']}" if st["rejected"] else "")
    )
    lines.append(f"events    {st['events_pending']} waiting to be sent")
    if st["devices"]:
        lines.append("devices:")
        w = max(len(d) for d in st["devices"])
        for dev, d in st["devices"].items():
            lines.append(f"  {dev:<{w}}  {count(d['count']):>9}  {d['oldest']} .. {d['newest']}")
    if st["quarantined"]:
        lines.append(
            paint(f"quarantined (corrupt) databases kept: {', '.join(st['quarantined'])}", "warn")
        )
    if st["snapshot_only"]:
        lines.append(
            paint(
                "note: read without the write-ahead log (folder not writable): "
                "the newest commits of a running agent may be missing",
                "warn",
            )
        )
    print("\n".join(lines))
    return 0


# -- export -------------------------------------------------------------------------------
def parse_time(text: str, now: float | None = None) -> float:
    """RFC 3339 / ISO date (UTC when no offset) or an age like '2h' (= that long ago)."""
    from datetime import UTC, datetime

    from agent.units import parse_duration

    now = time.time() if now is None else now
    t = text.strip()
    try:
        return now - parse_duration(t)
    except (ValueError, TypeError):
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise CliExit(
            EXIT_USAGE,
            f"edge-agent buffer export: bad time {text!r} "
            "(use 2026-11-27T07:00:00Z, 2026-11-27 or an age like 2h)",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def select_rows(
    db: sqlite3.Connection, since: float | None, until: float | None, device: str | None
) -> Iterator[tuple[int, str]]:
    """(seq, payload) in seq order; the time filter compares each reading's own `ts`."""
    from agent.model import format_ts

    where, params = [], []
    # format_ts output has a fixed width, so text order is time order.
    if since is not None:
        where.append("json_extract(payload, '$.ts') >= ?")
        params.append(format_ts(since))
    if until is not None:
        where.append("json_extract(payload, '$.ts') < ?")
        params.append(format_ts(until))
    if device is not None:
        where.append("device = ?")
        params.append(device)
    sql = (
        "SELECT seq, payload FROM outbox"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY seq"
    )
    yield from db.execute(sql, params)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def write_export(
    db: sqlite3.Connection,
    out: TextIO,
    fmt: str,
    since: float | None,
    until: float | None,
    device: str | None,
    gateway: str,
    epoch: str,
) -> tuple[int, int | None, int | None]:
    """Write matching readings; (count, first seq, last seq)."""
    import csv

    from agent.model import format_ts

    n, lo, hi = 0, None, None
    if fmt == "jsonl":
        # The header makes the file self-contained: (gateway, epoch, seq) is the platform's key.
        out.write(json.dumps({"v": 1, "gateway": gateway, "epoch": epoch, "exported": format_ts(time.time())},
                             separators=(",", ":")) + "\n")
        for seq, payload in select_rows(db, since, until, device):
            out.write(payload + "\n")
            n, lo, hi = n + 1, lo if lo is not None else seq, seq
        return n, lo, hi
    qty: set[str] = set()
    tags: set[str] = set()
    for _, payload in select_rows(db, since, until, device):  # first pass: the columns
        r = json.loads(payload)
        qty.update(r["values"])
        tags.update(r.get("tags") or {})
    vcols, tcols = sorted(qty), sorted(tags)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(
        [
            "gateway",
            "epoch",
            "seq",
            "ts",
            "device",
            "driver",
            "clock",
            *vcols,
            *(f"tag.{t}" for t in tcols),
        ]
    )
    for seq, payload in select_rows(db, since, until, device):
        r = json.loads(payload)
        vals, tg = r["values"], r.get("tags") or {}
        w.writerow(
            [
                gateway,
                epoch,
                seq,
                r["ts"],
                r["device"],
                r["driver"],
                r["clock"],
                *(_cell(vals.get(k)) for k in vcols),
                *(_cell(tg.get(t)) for t in tcols),
            ]
        )
        n, lo, hi = n + 1, lo if lo is not None else seq, seq
    return n, lo, hi


def export(args: argparse.Namespace) -> int:
    import io

    if args.json and args.format != "jsonl":
        raise CliExit(EXIT_USAGE, "edge-agent buffer export: --json is --format jsonl; not with --format csv")
    cfg = load(args)
    now = time.time()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    db, _ = open_readonly(Path(cfg.buffer.path))
    try:
        if args.device is not None and args.device not in {d.id for d in cfg.devices}:
            buffered = [r[0] for r in db.execute("SELECT DISTINCT device FROM outbox ORDER BY device")]
            if args.device not in buffered:  # one rule with `tail --device`: exit 1 naming the known ones
                raise CliExit(EXIT_FAILURE, f"edge-agent buffer export: no device {args.device!r} in "
                              f"{cfg.source_path} (configured: {', '.join(d.id for d in cfg.devices) or 'none'})"
                              + (f" nor in the buffer ({', '.join(buffered)})" if buffered else ""))
            print(f"edge-agent buffer export: note: {args.device!r} is not in the current config; "
                  "exporting its buffered readings", file=sys.stderr)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        gateway, epoch = meta.get("gateway") or cfg.gateway.id, meta.get("epoch", "")
        if args.output:
            target = Path(args.output)
            part = target.with_name(target.name + ".part")
            try:
                with open(part, "w", encoding="utf-8", newline="") as f:
                    n, lo, hi = write_export(
                        db, f, args.format, since, until, args.device, gateway, epoch
                    )
                    f.flush()
                    os.fsync(f.fileno())  # the USB stick may be pulled right after
                os.replace(part, target)
            except OSError as e:
                with contextlib.suppress(OSError):
                    part.unlink()
                raise CliExit(
                    EXIT_FAILURE,
                    f"edge-agent buffer export: cannot write {target}: {e.strerror or e}",
                ) from None
            where = str(target)
        else:
            out = (
                io.TextIOWrapper(
                    sys.stdout.buffer, encoding="utf-8", newline="", write_through=False
                )
                if hasattr(sys.stdout, "buffer")
                else sys.stdout
            )
            n, lo, hi = write_export(
                db, out, args.format, since, until, args.device, gateway, epoch
            )
            out.flush()
            if out is not sys.stdout:
                out.detach()  # type: ignore[union-attr]
            where = "standard output"
    finally:
        db.close()
    rng = f", seq {lo}..{hi}" if n else ""
    print(
        f"exported {n} readings{rng} (gateway {gateway}, epoch {epoch}) "
        f"as {args.format} to {where}; "
        "they stay in the buffer until the broker acknowledges them",
        file=sys.stderr,
    )
    return 0
