"""Idempotent writes of MQTT messages into PostgreSQL, and the accounting read back from the tables.

`write_batch` classifies a batch of messages, then writes it with a handful of set-based
statements inside the caller's transaction. Every table is keyed so a redelivery is a no-op:
readings on (gateway, epoch, seq), gaps on (gateway, epoch, from_seq), events, invalid
messages and conflicts on a digest of their content. A redelivered reading or gap whose
content differs from the stored one is a contract violation: it goes to `conflicts`, the
first one stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.contract import TOPICS, ContractError, GapEvent, Telemetry, validate
from agent.receiver import account, raw_readings

log = logging.getLogger(__name__)


def digest(data: bytes | str) -> bytes:
    """16-byte BLAKE2b of the exact text (what "byte-identical" compares)."""
    return hashlib.blake2b(data.encode() if isinstance(data, str) else data, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message as received (mid/qos/generation say how to acknowledge it)."""

    topic: str
    payload: bytes
    qos: int = 1
    mid: int = 0
    generation: int = 0


@dataclass(slots=True)
class Outcome:
    """What one batch did (the instance's counters add these up)."""

    messages: int = 0
    readings: int = 0
    duplicates: int = 0
    conflicts: int = 0
    gaps: int = 0
    gap_duplicates: int = 0
    events: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    # key -> (R text, its digest, the row's device, driver, ts, clock, values and tags as JSON)
    readings: dict[tuple[str, str, int], tuple[str, bytes, tuple[str, str, str, str, str, str]]] = field(
        default_factory=dict)
    gaps: dict[tuple[str, str, int], tuple[GapEvent, bytes, str]] = field(default_factory=dict)
    events: dict[tuple[str, bytes], tuple[str, str, str]] = field(default_factory=dict)
    status: dict[str, tuple[Any, str]] = field(default_factory=dict)
    health: dict[tuple[str, str], str] = field(default_factory=dict)
    invalid: dict[bytes, tuple[str, str | None, str, bytes]] = field(default_factory=dict)
    conflicts: dict[tuple[str, str, str, int, bytes], str] = field(default_factory=dict)
    duplicates: dict[tuple[str, str], int] = field(default_factory=dict)
    gap_duplicates: dict[tuple[str, str], int] = field(default_factory=dict)


def _topic_gateway(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[-2] if len(parts) >= 2 else None


def _classify(messages: list[Message]) -> _Batch:
    b = _Batch()
    for m in messages:
        kind = m.topic.rpartition("/")[2]
        if kind == "commands":
            continue  # the platform's own signed commands (docs/PROTOCOL.md#commands), not a gateway's message
        try:
            if kind not in TOPICS:
                raise ContractError(f"unknown topic {m.topic!r}")
            msg = validate(kind, m.payload)
            if isinstance(msg, GapEvent) and (
                    msg.to_seq < msg.from_seq or msg.count > msg.to_seq - msg.from_seq + 1):
                raise ContractError("events: gap: count does not fit in [from_seq, to_seq]")
            gateway = getattr(msg, "gateway", None) or _topic_gateway(m.topic)
            if gateway is None:
                raise ContractError(f"events: no gateway in topic {m.topic!r}")
        except ContractError as e:
            b.invalid.setdefault(_invalid_key(m), (m.topic, _topic_gateway(m.topic), str(e), m.payload))
            continue
        text = m.payload.decode("utf-8")
        if kind == "telemetry":
            _telemetry(b, msg, text)
        elif kind == "events":
            d = digest(text)
            b.events.setdefault((gateway, d), (msg.type, msg.ts, text))
            if isinstance(msg, GapEvent):
                key = (gateway, msg.epoch, msg.from_seq)
                seen = b.gaps.get(key)
                if seen is None:
                    b.gaps[key] = (msg, d, text)
                elif seen[1] == d:
                    _bump(b.gap_duplicates, key[:2])
                else:
                    b.conflicts.setdefault(("gap", *key, d), text)
        elif kind == "status":
            b.status[gateway] = (msg, text)  # the batch's last one wins, as arrival order would
        elif kind == "health":
            b.health.setdefault((gateway, msg.ts), text)
    return b


def _bump(counts: dict[tuple[str, str], int], key: tuple[str, str], n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _json(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _telemetry(b: _Batch, msg: Telemetry, text: str) -> None:
    raws = raw_readings(text)
    if raws is None or len(raws) != len(msg.readings):
        raws = [json.dumps(r.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
                for r in msg.readings]
    for r, raw in zip(msg.readings, raws, strict=True):
        key = (msg.gateway, msg.epoch, r.seq)
        d = digest(raw)
        seen = b.readings.get(key)
        if seen is None:
            b.readings[key] = (raw, d, (r.device, r.driver, r.ts, r.clock, _json(r.values), _json(r.tags)))
        elif seen[1] == d:
            _bump(b.duplicates, key[:2])
        else:
            b.conflicts.setdefault(("reading", *key, d), raw)


# Readings travel by COPY into a per-session staging table (psycopg writes COPY rows in C; array
# parameters would be escaped element by element in Python), then one INSERT ... SELECT.
_READING_COLS = 'gateway, epoch, seq, device, driver, ts, clock, "values", tags, digest'
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS readings_in (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
_COPY_READINGS = f"COPY readings_in ({_READING_COLS}) FROM STDIN"
_INSERT_READINGS = f"""
INSERT INTO readings ({_READING_COLS})
SELECT {_READING_COLS} FROM readings_in
ORDER BY 1, 2, 3
ON CONFLICT (gateway, epoch, seq) DO NOTHING
RETURNING gateway, epoch, seq
"""
_EXISTING_READINGS = """
SELECT r.gateway, r.epoch, r.seq, r.digest FROM readings r
JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS t(g, e, s) ON r.gateway = g AND r.epoch = e AND r.seq = s
"""
_INSERT_GAPS = """
INSERT INTO gaps (gateway, epoch, from_seq, to_seq, count, reason, ts, digest)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[],
                     %s::timestamptz[], %s::bytea[])
ORDER BY 1, 2, 3
ON CONFLICT (gateway, epoch, from_seq) DO NOTHING
RETURNING gateway, epoch, from_seq
"""
_EXISTING_GAPS = """
SELECT x.gateway, x.epoch, x.from_seq, x.digest FROM gaps x
JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS t(g, e, s) ON x.gateway = g AND x.epoch = e AND x.from_seq = s
"""
_INSERT_EVENTS = """
INSERT INTO events (gateway, type, ts, payload, digest)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::jsonb[], %s::bytea[]) ORDER BY 1, 5
ON CONFLICT (gateway, digest) DO NOTHING
"""
_UPSERT_STATUS = """
INSERT INTO status (gateway, state, reason, epoch, version, ts, payload)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (gateway) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
    epoch = coalesce(EXCLUDED.epoch, status.epoch), version = coalesce(EXCLUDED.version, status.version),
    ts = EXCLUDED.ts, received = EXCLUDED.received, payload = EXCLUDED.payload
"""
_INSERT_HEALTH = """
INSERT INTO health (gateway, ts, payload)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::jsonb[]) ORDER BY 1, 2
ON CONFLICT (gateway, ts) DO NOTHING
"""
_UPSERT_HEALTH_LATEST = """
INSERT INTO health_latest (gateway, ts, payload)
SELECT DISTINCT ON (g) g, t, p FROM unnest(%s::text[], %s::timestamptz[], %s::jsonb[]) AS x(g, t, p)
ORDER BY g, t DESC
ON CONFLICT (gateway) DO UPDATE SET ts = EXCLUDED.ts, received = EXCLUDED.received, payload = EXCLUDED.payload
WHERE health_latest.ts <= EXCLUDED.ts
"""
_INSERT_INVALID = """
INSERT INTO invalid (topic, gateway, error, payload, digest)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[], %s::bytea[]) ORDER BY 5
ON CONFLICT (digest) DO NOTHING
RETURNING id
"""
_INSERT_CONFLICTS = """
INSERT INTO conflicts (kind, gateway, epoch, seq, digest, payload)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bytea[], %s::text[]) ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (kind, gateway, epoch, seq, digest) DO NOTHING
RETURNING kind, gateway, epoch, seq
"""
_TALLY = """
INSERT INTO tallies (gateway, epoch, instance, duplicates, gap_duplicates)
SELECT g, e, %s, d, gd FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) AS t(g, e, d, gd)
ORDER BY g, e
ON CONFLICT (gateway, epoch, instance) DO UPDATE SET
    duplicates = tallies.duplicates + EXCLUDED.duplicates,
    gap_duplicates = tallies.gap_duplicates + EXCLUDED.gap_duplicates
"""


def _cols(rows: Sequence[tuple[Any, ...]], n: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(n)] if rows else [[] for _ in range(n)]


_staged: weakref.WeakSet[Any] = weakref.WeakSet()


def prepare(conn: Any) -> None:
    """Create the session's staging table outside any transaction (a rollback cannot take it back)."""
    conn.execute(_STAGE)
    if conn.info.transaction_status == conn.info.transaction_status.IDLE:
        _staged.add(conn)


def _staging(conn: Any) -> None:
    """The session's staging table (temporary: one per connection, emptied at every commit)."""
    if conn not in _staged:
        conn.execute(_STAGE)  # inside the caller's transaction: again next time, in case it rolls back


def _settle(conn: Any, inserted_rows: Any, keys: list[tuple[str, str, int]], existing_sql: str, kind: str,
            mine: Callable[[tuple[str, str, int]], tuple[bytes, str]], duplicates: dict[tuple[str, str], int],
            conflicts: dict[tuple[str, str, str, int, bytes], str]) -> int:
    """How many `keys` the insert wrote; each one it skipped is a duplicate (same digest) or a conflict."""
    inserted = {tuple(r) for r in inserted_rows.fetchall()}
    rest = [k for k in keys if k not in inserted]
    if rest:
        for g, e, s, d in conn.execute(existing_sql, _cols(rest, 3)).fetchall():
            digest, text = mine((g, e, s))
            if bytes(d) == digest:
                _bump(duplicates, (g, e))
            else:
                conflicts.setdefault((kind, g, e, s, digest), text)
    return len(inserted)


def write_batch(conn: Any, messages: list[Message], instance: str) -> Outcome:
    """Write `messages` inside the caller's open transaction (the caller commits, then acks)."""
    out = Outcome(messages=len(messages))
    b = _classify(messages)
    if b.readings:
        keys = sorted(b.readings)
        _staging(conn)
        with conn.cursor().copy(_COPY_READINGS) as cp:
            for k in keys:
                cp.write_row((*k, *b.readings[k][2], b.readings[k][1]))
        out.readings = _settle(conn, conn.execute(_INSERT_READINGS), keys, _EXISTING_READINGS, "reading",
                               lambda k: (b.readings[k][1], b.readings[k][0]), b.duplicates, b.conflicts)
    if b.gaps:
        gap_keys = sorted(b.gaps)
        gap_rows = [(*k, gap.to_seq, gap.count, gap.reason, gap.ts, d) for k in gap_keys for gap, d, _ in [b.gaps[k]]]
        out.gaps = _settle(conn, conn.execute(_INSERT_GAPS, _cols(gap_rows, 8)), gap_keys, _EXISTING_GAPS, "gap",
                           lambda k: (b.gaps[k][1], b.gaps[k][2]), b.gap_duplicates, b.conflicts)
    if b.events:
        ev_rows = [(g, t, ts, text, d) for (g, d), (t, ts, text) in b.events.items()]
        conn.execute(_INSERT_EVENTS, _cols(ev_rows, 5))
        out.events = len(ev_rows)
    for gateway, (msg, text) in sorted(b.status.items()):
        conn.execute(_UPSERT_STATUS, (gateway, msg.state, getattr(msg, "reason", None),
                                      getattr(msg, "epoch", None), getattr(msg, "version", None), msg.ts, text))
    if b.health:
        cols = _cols([(g, ts, text) for (g, ts), text in b.health.items()], 3)
        conn.execute(_INSERT_HEALTH, cols)
        conn.execute(_UPSERT_HEALTH_LATEST, cols)
    if b.invalid:
        _insert_invalid(conn, b.invalid, out)
    if b.conflicts:
        new = conn.execute(_INSERT_CONFLICTS, _cols([(*k, text) for k, text in b.conflicts.items()], 6)).fetchall()
        out.conflicts = len(new)
        out.errors += [f"conflicting redelivery of {k} ({g}, {e}, {s}): the first one is kept"
                       for k, g, e, s in new]
    if b.duplicates or b.gap_duplicates:
        ge = sorted(set(b.duplicates) | set(b.gap_duplicates))
        conn.execute(_TALLY, [instance, *_cols([(*k, b.duplicates.get(k, 0), b.gap_duplicates.get(k, 0))
                                                for k in ge], 4)])
        out.duplicates = sum(b.duplicates.values())
        out.gap_duplicates = sum(b.gap_duplicates.values())
    return out


def _invalid_key(m: Message) -> bytes:
    return digest(m.topic.encode() + b"\0" + m.payload)


def _insert_invalid(conn: Any, items: dict[bytes, tuple[str, str | None, str, bytes]], out: Outcome) -> None:
    rows = [(t, g, err, p, d) for d, (t, g, err, p) in items.items()]
    out.invalid = len(conn.execute(_INSERT_INVALID, _cols(rows, 5)).fetchall())
    out.errors += [f"invalid message on {t}: {err}" for t, _, err, _ in items.values()]


def write_invalid(conn: Any, m: Message, error: str) -> Outcome:
    """File one message as invalid (e.g. content the database itself refuses)."""
    out = Outcome(messages=1)
    _insert_invalid(conn, {_invalid_key(m): (m.topic, _topic_gateway(m.topic), error, m.payload)}, out)
    return out


# -- accounting -------------------------------------------------------------------------------------
def report(conn: Any, gateway: str | None = None, *, since_epoch_start: bool = False) -> dict[str, Any]:
    """The receiver's accounting, per gateway and epoch, computed from the tables."""
    where, args = ("WHERE gateway = %s", [gateway]) if gateway else ("", [])
    per: dict[tuple[str, str], dict[str, Any]] = {}

    def q(sql: str) -> list[tuple[Any, ...]]:
        return list(conn.execute(sql.format(where=where), args).fetchall())

    spans = {(g, e): (lo, hi, n) for g, e, lo, hi, n in q(
        "SELECT gateway, epoch, min(seq), max(seq), count(*) FROM readings {where} GROUP BY 1, 2")}
    gaps: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for g, e, a, z, n in q("SELECT gateway, epoch, from_seq, to_seq, count FROM gaps {where} ORDER BY 1, 2, 3"):
        gaps.setdefault((g, e), []).append((a, z, n))
    holes: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for g, e, a, z in q("SELECT gateway, epoch, prev + 1, seq - 1 FROM (SELECT gateway, epoch, seq, "
                        "lag(seq) OVER (PARTITION BY gateway, epoch ORDER BY seq) AS prev FROM readings {where}) t "
                        "WHERE seq > prev + 1"):
        holes.setdefault((g, e), []).append((a, z))
    tallies = {(g, e): (int(d), int(gd)) for g, e, d, gd in q(
        "SELECT gateway, epoch, sum(duplicates), sum(gap_duplicates) FROM tallies {where} GROUP BY 1, 2")}
    conflicts: dict[tuple[str, str], dict[str, int]] = {}
    for g, e, k, n in q("SELECT gateway, epoch, kind, count(*) FROM conflicts {where} GROUP BY 1, 2, 3"):
        conflicts.setdefault((g, e), {})[k] = n
    for key in sorted(set(spans) | set(gaps)):
        lo, hi, n = spans.get(key, (None, None, 0))
        dup, gdup = tallies.get(key, (0, 0))
        c = conflicts.get(key, {})
        per[key] = {"gateway": key[0], "epoch": key[1], "duplicates": dup, "gap_duplicates": gdup,
                    "conflicts": c.get("reading", 0), "gap_conflicts": c.get("gap", 0),
                    **account(lo, hi, n, gaps.get(key, []), holes.get(key, []),
                              since_epoch_start=since_epoch_start)}
    invalid = q("SELECT count(*) FROM invalid {where}")[0][0]
    unknown = q("SELECT count(*) FROM events {where} " + ("AND" if where else "WHERE")
                + " type = 'buffer_quarantined' AND payload->'lost' = 'null'::jsonb")[0][0]
    status = {g: {"state": s, "reason": r, "ts": _iso(ts)}
              for g, s, r, ts in q("SELECT gateway, state, reason, ts FROM status {where} ORDER BY 1")}
    epochs = list(per.values())
    total = {k: sum(e[k] for e in epochs) for k in (
        "received", "duplicates", "conflicts", "gaps", "gap_duplicates", "gap_conflicts", "gap_readings",
        "missing", "unexplained", "gap_balance")}
    rep: dict[str, Any] = {
        **total, "invalid": invalid, "quarantines_unknown": unknown,
        "gateways": len({e["gateway"] for e in epochs}), "status": status, "epochs": epochs,
    }
    rep["ok"] = not (total["conflicts"] or total["gap_conflicts"] or invalid
                     or total["unexplained"] or total["gap_balance"])
    return rep


def _iso(ts: Any) -> str:
    from datetime import UTC

    return str(ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
