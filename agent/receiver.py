"""Reference receiver: what a platform does with a gateway's MQTT, and the oracle of our tests.

It subscribes to `P/#` (QoS 1), validates every message against the contract
(agent/contract.py = docs/schema/*.schema.json), dedupes readings on (gateway, epoch, seq)
checking that a redelivered reading is byte-identical, stores readings, gaps and events in
SQLite and reports the accounting:

- `received` unique readings; `duplicates` identical redeliveries dropped; `conflicts`
  redeliveries whose content differs (a contract violation);
- `invalid` messages failing the schema (or on an unknown topic);
- `gaps` gap events (deduped on (epoch, from_seq)), `gap_readings` the sum of their counts;
- `missing` seqs never seen; `unexplained` missing seqs outside every gap; `gap_balance`
  gap_readings minus the missing seqs inside gaps (0 when the gaps add up exactly).

The missing-seq accounting covers, per epoch, seq 1 (with `since_epoch_start`, i.e. the
receiver listened since the gateway's epoch began) or else the lowest seq/gap seen, up to
the highest seq/gap seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.contract import TOPICS, ContractError, GapEvent, Telemetry, validate

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    device TEXT NOT NULL, ts TEXT NOT NULL, received REAL NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (epoch, seq, gateway)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    prefix TEXT NOT NULL, epoch TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
    count INTEGER NOT NULL, reason TEXT NOT NULL, received REAL NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (epoch, from_seq, prefix)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, type TEXT NOT NULL, received REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invalid (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, error TEXT NOT NULL, received REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS status (
    topic TEXT PRIMARY KEY, state TEXT NOT NULL, received REAL NOT NULL, payload TEXT NOT NULL
);
"""


def raw_readings(payload: str) -> list[str] | None:
    """The exact text of each element of `readings` (None when the layout is unexpected)."""
    key = payload.find('"readings":')
    if key < 0:
        return None
    i = payload.find("[", key)
    dec = json.JSONDecoder()
    out: list[str] = []
    i += 1
    n = len(payload)
    while i < n:
        while i < n and payload[i] in " \t\r\n":
            i += 1
        if i < n and payload[i] == "]":
            return out
        try:
            _, end = dec.raw_decode(payload, i)
        except ValueError:
            return None
        out.append(payload[i:end])
        i = end
        while i < n and payload[i] in " \t\r\n":
            i += 1
        if i < n and payload[i] == ",":
            i += 1
    return None


def _canonical(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class Counters:
    messages: int = 0
    received: int = 0
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    out_of_order: int = 0
    gap_events: int = 0
    gap_duplicates: int = 0
    gap_conflicts: int = 0
    births: int = 0
    offline: int = 0
    health: int = 0
    command_results: int = 0
    events: dict[str, int] = field(default_factory=dict)


class Receiver:
    """Validates, dedupes and stores one gateway's messages; `report()` does the accounting."""

    def __init__(self, db_path: str | Path = ":memory:", *, since_epoch_start: bool = False,
                 max_errors: int = 20) -> None:
        self.db = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.since_epoch_start = since_epoch_start
        self.c = Counters()
        self.errors: list[str] = []
        self.max_errors = max_errors
        self._top: dict[tuple[str, str], int] = {}  # (gateway, epoch) -> highest seq seen
        self.quarantines_unknown = 0
        self.started = time.time()

    def close(self) -> None:
        self.db.close()

    def _error(self, msg: str) -> None:
        log.error("receiver: %s", msg)
        if len(self.errors) < self.max_errors:
            self.errors.append(msg)

    # -- ingestion --------------------------------------------------------------------------
    def ingest(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """One MQTT message."""
        self.c.messages += 1
        prefix, _, kind = topic.rpartition("/")
        if kind == "result" and prefix.endswith("/commands"):
            prefix, kind = prefix.removesuffix("/commands"), "commands/result"
        elif kind == "commands":
            return  # the platform's own signed commands: the gateway verifies those
        now = time.time()
        try:
            if kind not in TOPICS:
                raise ContractError(f"unknown topic {topic!r}")
            msg = validate(kind, payload)
            if isinstance(msg, GapEvent) and (
                    msg.to_seq < msg.from_seq or msg.count > msg.to_seq - msg.from_seq + 1):
                raise ContractError("events: gap: count does not fit in [from_seq, to_seq]")
        except ContractError as e:
            self.c.invalid += 1
            self._error(f"invalid message on {topic}: {e}")
            self.db.execute("INSERT INTO invalid (topic, error, received, payload) VALUES (?, ?, ?, ?)",
                            (topic, str(e), now, payload))
            return
        text = payload.decode("utf-8")
        if kind == "telemetry":
            self._telemetry(msg, text, now)
        elif kind == "events":
            self._event(prefix, msg, text, now)
        elif kind == "status":
            if msg.state == "online":
                self.c.births += 1
            else:
                self.c.offline += 1
            self.db.execute("INSERT OR REPLACE INTO status VALUES (?, ?, ?, ?)", (topic, msg.state, now, text))
        elif kind == "health":
            self.c.health += 1
        elif kind == "commands/result":
            self.c.command_results += 1

    def _telemetry(self, msg: Telemetry, text: str, now: float) -> None:
        raws = raw_readings(text)
        if raws is None or len(raws) != len(msg.readings):
            raws = [_canonical(r.model_dump(mode="json")) for r in msg.readings]
        db = self.db
        key = (msg.gateway, msg.epoch)
        top = self._top.get(key)
        if top is None:
            top = db.execute("SELECT max(seq) FROM readings WHERE epoch = ? AND gateway = ?",
                             (msg.epoch, msg.gateway)).fetchone()[0] or 0
        db.execute("BEGIN")
        try:
            for r, raw in zip(msg.readings, raws, strict=True):
                row = db.execute("SELECT payload FROM readings WHERE epoch = ? AND seq = ? AND gateway = ?",
                                 (msg.epoch, r.seq, msg.gateway)).fetchone()
                if row is not None:
                    if row[0] == raw:
                        self.c.duplicates += 1
                    else:
                        self.c.conflicts += 1
                        self._error(f"conflicting redelivery of ({msg.gateway}, {msg.epoch}, {r.seq}): "
                                    f"{row[0][:120]} != {raw[:120]}")
                    continue
                if r.seq < top:
                    self.c.out_of_order += 1
                    self._error(f"out of order: seq {r.seq} after {top} (epoch {msg.epoch})")
                top = max(top, r.seq)
                db.execute("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (msg.gateway, msg.epoch, r.seq, r.device, r.ts, now, raw))
                self.c.received += 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._top[key] = top

    def _event(self, prefix: str, msg: Any, text: str, now: float) -> None:
        self.c.events[msg.type] = self.c.events.get(msg.type, 0) + 1
        self.db.execute("INSERT INTO events (topic, type, received, payload) VALUES (?, ?, ?, ?)",
                        (prefix + "/events", msg.type, now, text))
        if isinstance(msg, GapEvent):
            row = self.db.execute("SELECT payload FROM gaps WHERE epoch = ? AND from_seq = ? AND prefix = ?",
                                  (msg.epoch, msg.from_seq, prefix)).fetchone()
            if row is not None:
                if row[0] == text:
                    self.c.gap_duplicates += 1
                else:
                    self.c.gap_conflicts += 1
                    self._error(f"conflicting gap events for epoch {msg.epoch} from seq {msg.from_seq}")
                return
            self.c.gap_events += 1
            self.db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (prefix, msg.epoch, msg.from_seq, msg.to_seq, msg.count, msg.reason, now, text))
        elif msg.type == "buffer_quarantined" and msg.lost is None:
            self.quarantines_unknown += 1

    # -- accounting -----------------------------------------------------------------------------
    def epoch_report(self, epoch: str) -> dict[str, Any]:
        db = self.db
        first, last, n = db.execute("SELECT min(seq), max(seq), count(*) FROM readings WHERE epoch = ?",
                                    (epoch,)).fetchone()
        gaps = db.execute("SELECT from_seq, to_seq, count FROM gaps WHERE epoch = ? ORDER BY from_seq",
                          (epoch,)).fetchall()
        inner = db.execute(
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, lag(seq) OVER (ORDER BY seq) AS prev "
            "FROM readings WHERE epoch = ?) WHERE seq > prev + 1", (epoch,)).fetchall()
        return {"epoch": epoch, **account(first, last, n, gaps, inner, since_epoch_start=self.since_epoch_start)}

    def report(self) -> dict[str, Any]:
        """Counters plus per-epoch accounting; `ok` when nothing is invalid, unexplained or off."""
        epochs = [r[0] for r in self.db.execute(
            "SELECT epoch FROM readings UNION SELECT epoch FROM gaps ORDER BY 1")]
        per = [self.epoch_report(e) for e in epochs]
        c = self.c
        rep: dict[str, Any] = {
            "messages": c.messages, "received": c.received, "duplicates": c.duplicates,
            "conflicts": c.conflicts, "invalid": c.invalid, "out_of_order": c.out_of_order,
            "gaps": c.gap_events, "gap_duplicates": c.gap_duplicates, "gap_conflicts": c.gap_conflicts,
            "gap_readings": sum(e["gap_readings"] for e in per),
            "missing": sum(e["missing"] for e in per),
            "unexplained": sum(e["unexplained"] for e in per),
            "gap_balance": sum(e["gap_balance"] for e in per),
            "quarantines_unknown": self.quarantines_unknown,
            "births": c.births, "offline": c.offline, "health": c.health,
            "command_results": c.command_results, "events": dict(c.events),
            "status": {t: s for t, s in self.db.execute("SELECT topic, state FROM status")},
            "epochs": per, "errors": list(self.errors),
        }
        rep["ok"] = not (c.conflicts or c.invalid or c.out_of_order or c.gap_conflicts
                         or rep["unexplained"] or rep["gap_balance"])
        return rep


def account(first: int | None, last: int | None, n: int, gaps: list[tuple[int, int, int]],
            inner_holes: list[tuple[int, int]], *, since_epoch_start: bool) -> dict[str, Any]:
    """One epoch's seq accounting from its readings (lowest, highest, count, holes between) and gaps."""
    lows = [x for x in [first, *(g[0] for g in gaps)] if x is not None]
    highs = [x for x in [last, *(g[1] for g in gaps)] if x is not None]
    low = 1 if since_epoch_start else min(lows)
    high = max(highs)
    holes: list[tuple[int, int]] = []
    if first is None or last is None:
        holes.append((low, high))
    else:
        if first > low:
            holes.append((low, first - 1))
        holes += inner_holes
        if last < high:
            holes.append((last + 1, high))
    missing = sum(b - a + 1 for a, b in holes)
    covered = _covered(holes, [(g[0], g[1]) for g in gaps])
    gap_readings = sum(g[2] for g in gaps)
    return {
        "received": n, "first_seq": low, "last_seq": high,
        "gaps": len(gaps), "gap_readings": gap_readings, "missing": missing,
        "unexplained": missing - covered, "gap_balance": gap_readings - covered,
    }


def _covered(holes: list[tuple[int, int]], gaps: list[tuple[int, int]]) -> int:
    """How many seqs of `holes` lie inside the union of `gaps` (both sorted lists of ranges)."""
    merged: list[list[int]] = []
    for a, b in sorted(gaps):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    total, j = 0, 0
    for a, b in sorted(holes):
        while j < len(merged) and merged[j][1] < a:
            j += 1
        k = j
        while k < len(merged) and merged[k][0] <= b:
            total += min(b, merged[k][1]) - max(a, merged[k][0]) + 1
            k += 1
    return total


def format_report(rep: dict[str, Any]) -> str:
    """Human summary, a few lines."""
    lines = [
        f"received {rep['received']} readings in {len(rep['epochs'])} epoch(s) from {rep['messages']} "
        f"messages; duplicates dropped {rep['duplicates']}, conflicts {rep['conflicts']}, "
        f"invalid {rep['invalid']}, out of order {rep['out_of_order']}",
        f"gaps {rep['gaps']} ({rep['gap_readings']} readings lost, gap balance {rep['gap_balance']}); "
        f"missing {rep['missing']}, unexplained missing {rep['unexplained']}",
        f"status births {rep['births']}, offline {rep['offline']}; health {rep['health']}; "
        f"events {json.dumps(rep['events'], sort_keys=True)}",
    ]
    if rep["quarantines_unknown"]:
        lines.append(f"{rep['quarantines_unknown']} quarantined buffer(s) with an unknown loss")
    lines += [f"error: {e}" for e in rep["errors"]]
    lines.append("OK" if rep["ok"] else "NOT OK")
    return "\n".join(lines)


# -- MQTT ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how the receiver connects."""

    host: str
    port: int
    prefix: str
    client_id: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None


def tls_context(ep: Endpoint) -> Any:
    import ssl

    if not (ep.tls or ep.ca_file or ep.cert_file):
        return None
    ctx = ssl.create_default_context(cafile=ep.ca_file)
    if ep.cert_file:
        ctx.load_cert_chain(ep.cert_file, ep.key_file)
    return ctx


async def run_mqtt(rx: Receiver, ep: Endpoint, *, on_subscribed: Callable[[], None] | None = None,
                   keep_session: bool = False) -> None:
    """Receive until cancelled; a persistent session bridges broker restarts (dropped on exit)."""
    import aiomqtt

    ctx = tls_context(ep)

    def client(clean: bool) -> aiomqtt.Client:
        return aiomqtt.Client(ep.host, ep.port, identifier=ep.client_id, clean_session=clean,
                              username=ep.username, password=ep.password, tls_context=ctx,
                              keepalive=10, timeout=10)

    delay = 0.1
    try:
        while True:
            try:
                async with client(False) as c:
                    await c.subscribe(f"{ep.prefix}/#", qos=1)
                    delay = 0.1
                    log.info("receiver: subscribed to %s/# on %s:%d", ep.prefix, ep.host, ep.port)
                    if on_subscribed is not None:
                        on_subscribed()
                    async for m in c.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        rx.ingest(str(m.topic), payload, bool(m.retain))
            except aiomqtt.MqttError as e:
                log.warning("receiver: %s:%d: %s; reconnecting", ep.host, ep.port, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    finally:
        if not keep_session:
            try:  # a clean connect drops the broker's queue for us
                async with asyncio.timeout(3):
                    async with client(True):
                        pass
            except (aiomqtt.MqttError, TimeoutError, OSError):
                pass
