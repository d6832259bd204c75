"""One ingest instance: MQTT 5 shared subscription in, PostgreSQL transactions out, PUBACK after commit.

Threads: paho's network thread receives and queues messages; the writer (the caller of
`Ingestor.run`) takes batches off the queue, writes each batch in one transaction and only
then acknowledges its QoS 1 messages. The broker never has more than `max_inflight`
unacknowledged messages out to us (MQTT 5 Receive Maximum), so a slow or absent database
stops the flow at the broker instead of growing our memory; QoS 0 messages (health) beyond
the queue's room are dropped and counted.

A message is acknowledged only on the connection it arrived on: after a reconnect the broker
resends what we had not acknowledged (our session is persistent), and the copy we already
committed is then a duplicate the tables drop.
"""

from __future__ import annotations

import logging
import queue
import re
import ssl
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from agent.ingest.schema import VERSION, current_version
from agent.ingest.store import Message, Outcome, prepare, write_batch, write_invalid
from agent.mqttcodes import CREDENTIALS, Failure, of_reason_code, reason_code
from edge_common.errors import EdgeAgentError

log = logging.getLogger("agent.ingest")

# What a refused CONNECT asks the operator to check, by the failure its reason code names.
REFUSAL_HINTS: dict[Failure | None, str] = {
    **dict.fromkeys(CREDENTIALS, "check --username/--password-file and the broker's ACL"),
    Failure.SERVER_UNAVAILABLE: "the broker takes no sessions for now; retrying",
    Failure.CLIENT_ID_REJECTED: "check --client-id",
}


def redact(url: str) -> str:
    """A database URL fit for a log line (no password)."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password=)\S+", r"\1***", url)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one instance needs (the CLI fills it from flags)."""

    db: str
    host: str = "127.0.0.1"
    port: int = 1883
    group: str = "edge-ingest"
    client_id: str = "edge-ingest"
    topics: tuple[str, ...] = ("edge/+/+",)
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    max_inflight: int = 1000
    batch_max: int = 500
    batch_bytes: int = 2 * 2**20  # a batch also closes at this much payload (memory per transaction)
    batch_wait: float = 0.05
    session_expiry: int = 7 * 86400
    keepalive: int = 30
    retire: bool = False  # drain this client id's session into the database, then end the session
    retire_quiet: float = 2.0  # retiring: done after this long without a message


@dataclass(slots=True)
class Totals:
    """What this instance did since it started: the batches' outcomes summed, and its own troubles."""

    written: Outcome = field(default_factory=Outcome)
    batches: int = 0
    dropped_qos0: int = 0
    db_errors: int = 0
    reconnects: int = 0
    last_error: str = ""

    def add(self, o: Outcome) -> None:
        for f in fields(Outcome):
            if f.name != "errors":
                setattr(self.written, f.name, getattr(self.written, f.name) + getattr(o, f.name))
        self.batches += 1


class FatalError(EdgeAgentError):
    """The instance cannot go on (exit 1 with this message)."""


class Ingestor:
    """One instance of the shared group."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.q: queue.Queue[Message] = queue.Queue(maxsize=settings.max_inflight + 1000)
        self.totals = Totals()
        self.stop = threading.Event()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()  # generation vs. acknowledgements
        self._gen = 0
        self._fatal: str | None = None
        self._conn: Any = None
        self._client: Any = None
        self.in_hand = 0  # messages taken off the queue, not yet acknowledged
        self._last_activity = time.monotonic()
        self.retired = False
        self._connected_at = time.monotonic()
        self._minute = (time.monotonic(), Outcome(), 0, 0)

    # -- MQTT (paho's network thread) -----------------------------------------------------
    def _mqtt(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        s = self.s
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True, reconnect_on_failure=False)
        if s.username:
            c.username_pw_set(s.username, s.password)
        if s.tls is not None:
            c.tls_set_context(s.tls)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.max_inflight
        filters = [(f"$share/{s.group}/{t}", SubscribeOptions(qos=1)) for t in s.topics]

        def on_connect(client: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                self.totals.last_error = f"broker refused us: {rc}"
                failure = of_reason_code(reason_code(rc) or 0x80)
                log.error("ingest: %s:%d refused the connection: %s (%s)", s.host, s.port, rc,
                          REFUSAL_HINTS.get(failure, "ask the broker's operator why"))
                refused.append(True)
                return
            if s.retire:  # nothing new is routed to us; what the session holds still comes
                client.unsubscribe([f for f, _ in filters])
            else:
                client.subscribe(filters)

        def on_unsubscribe(_c: Any, _u: Any, _mid: Any, _rcs: Any, _p: Any) -> None:
            log.info("ingest: retiring %s: unsubscribed from %s on %s:%d; draining its session", s.client_id,
                     ", ".join(f for f, _ in filters), s.host, s.port)
            self._last_activity = time.monotonic()
            self.subscribed.set()

        def on_subscribe(_c: Any, _u: Any, _mid: Any, rcs: Any, _p: Any) -> None:
            self._connected_at = time.monotonic()
            bad = [str(r) for r in rcs if r.is_failure]
            if bad:
                self._fatal = f"broker refused the subscription {[f for f, _ in filters]}: {', '.join(bad)}"
                self.stop.set()
                return
            log.info("ingest: subscribed to %s on %s:%d as %s", ", ".join(f for f, _ in filters),
                     s.host, s.port, s.client_id)
            self.subscribed.set()

        refused: list[bool] = []  # the broker refused the CONNECT: its disconnect needs no second warning
        short_lived: list[float] = []  # how long each recent connection lasted, when that was short

        def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            lasted = time.monotonic() - self._connected_at
            with self._lock:
                self._gen += 1  # what arrived on that connection is not ours to acknowledge any more
            self.subscribed.clear()
            if self.stop.is_set() or refused:
                refused.clear()
                return
            self.totals.reconnects += 1
            if of_reason_code(reason_code(rc) or 0) is Failure.SESSION_TAKEN_OVER:
                self._fatal = (f"another instance connected with client id {s.client_id!r} and took over "
                               "its session: give every instance its own --client-id")
                self.stop.set()
                return
            self.totals.last_error = f"connection lost: {rc}"
            log.warning("ingest: %s:%d: connection lost (%s); reconnecting", s.host, s.port, rc)
            # Mosquitto closes a taken-over session without telling why (other brokers send reason 142).
            short_lived[:] = [*short_lived, lasted][-3:] if lasted < 5 else []
            if len(short_lived) == 3:
                log.warning("ingest: the broker closed our last 3 connections within seconds: if another instance "
                            "runs with client id %r, give every instance its own --client-id", s.client_id)
                short_lived.clear()

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            msg = Message(m.topic, bytes(m.payload), m.qos, m.mid, self._gen)
            if m.qos == 0:
                try:
                    self.q.put_nowait(msg)
                except queue.Full:
                    self.totals.dropped_qos0 += 1
            else:
                self.q.put(msg)  # Receive Maximum bounds these: never blocks for long

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_unsubscribe = on_unsubscribe
        c.on_disconnect = on_disconnect
        c.on_message = on_message
        self._net = threading.Thread(target=self._network, args=(c, props), name="ingest-mqtt", daemon=True)
        self._net.start()
        return c

    def _network(self, c: Any, props: Any) -> None:
        """Connect, run paho's loop until the connection ends, reconnect with backoff; say why it failed."""
        s = self.s
        delay = 0.5
        while not self.stop.is_set():
            try:
                c.connect(s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props)
            except ssl.SSLError as e:
                detail = getattr(e, "verify_message", None)
                reason = f"certificate verify failed: {detail}" if detail else (e.reason or str(e))
                why = (f"TLS with {s.host}:{s.port} failed: {reason}; no fallback to plaintext "
                       "(check --tls-ca/--tls-cert/--tls-key)")
            except OSError as e:
                why = (f"TLS with {s.host}:{s.port} failed: {e.strerror or e}; no fallback to plaintext"
                       if s.tls is not None else f"{s.host}:{s.port}: {e.strerror or e}")
            else:
                if self.stop.is_set():  # asked to stop while connecting: leave at once
                    self._disconnect(c)
                began = self._connected_at
                c.loop_forever()
                # A session that got subscribed starts the backoff anew; a refused one (credentials) backs off.
                delay = 0.1 if self._connected_at != began else min(delay * 2, 10.0)
                if self.stop.wait(delay):
                    break
                continue
            self.totals.last_error = why
            log.warning("ingest: %s; retrying in %.1fs", why, delay)
            if self.stop.wait(delay):
                break
            delay = min(delay * 2, 2.0)  # soon back after a broker restart: see PLATFORM.md on Mosquitto

    def _ack(self, batch: list[Message]) -> None:
        with self._lock:
            for m in batch:
                if m.qos and m.generation == self._gen:
                    self._client.ack(m.mid, m.qos)
        self.in_hand = 0

    def _handle(self, batch: list[Message]) -> None:
        self.in_hand = len(batch)
        self._write(batch)
        self._ack(batch)

    # -- PostgreSQL (the writer) ------------------------------------------------------------
    def _connection(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        conn = psycopg.connect(self.s.db, autocommit=True, connect_timeout=5,
                               application_name=f"edge-agent ingest {self.s.client_id}"[:63])
        v = current_version(conn)
        if v != VERSION:
            conn.close()
            what = "has no edge-agent schema" if v == 0 else f"has schema version {v}, this edge-agent uses {VERSION}"
            raise FatalError(f"the database {redact(self.s.db)} {what}: run edge-agent ingest --init")
        prepare(conn)
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass
        self._conn = None

    def _write(self, batch: list[Message]) -> None:
        """Commit `batch`, retrying until the database takes it; a message it refuses is stored as invalid."""
        import psycopg

        delay = 0.1
        while True:
            try:
                conn = self._connection()
                try:
                    with conn.transaction():
                        out = write_batch(conn, batch, self.s.client_id)
                except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as e:
                    if len(batch) == 1:  # the database refuses this message's content itself
                        with conn.transaction():
                            out = write_invalid(conn, batch[0], f"database refused it: {_first_line(e)}")
                    else:
                        for m in batch:
                            self._write([m])
                        return
                self._after(out)
                return
            except psycopg.OperationalError as e:
                self.totals.db_errors += 1
                self.totals.last_error = f"database: {_first_line(e)}"
                log.warning("ingest: %s; %d message(s) wait unacknowledged, retrying in %.1fs",
                            self.totals.last_error, len(batch), delay)
                self._drop_connection()
                if self.stop.wait(delay):
                    raise _Abandon() from None
                delay = min(delay * 2, 5.0)

    def _after(self, out: Outcome) -> None:
        self.totals.add(out)
        for err in out.errors[:20]:
            log.error("ingest: %s", err)

    def _collect(self, first_timeout: float) -> list[Message]:
        try:
            batch = [self.q.get(timeout=first_timeout)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.s.batch_wait
        size = len(batch[0].payload)
        while len(batch) < self.s.batch_max and size < self.s.batch_bytes:
            try:
                m = self.q.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    m = self.q.get(timeout=left)
                except queue.Empty:
                    break
            batch.append(m)
            size += len(m.payload)
        return batch

    def run(self, stop_grace: float = 5.0) -> None:
        """Ingest until `stop` is set; FatalError when the instance cannot go on."""
        import psycopg

        try:
            self._connection()  # a missing schema is fatal at once; an unreachable database is retried
        except psycopg.OperationalError as e:
            log.warning("ingest: database %s: %s; retrying while messages wait at the broker",
                        redact(self.s.db), _first_line(e))
        self._client = self._mqtt()
        try:
            while not self.stop.is_set():
                batch = self._collect(0.2)
                self._log_minute()
                if batch:
                    self._handle(batch)
                    self._last_activity = time.monotonic()
                elif (self.s.retire and self.subscribed.is_set() and self.q.empty()
                      and time.monotonic() - self._last_activity > self.s.retire_quiet):
                    self.retired = True
                    return
            if self._fatal is not None:
                raise FatalError(self._fatal)
            # Stopping: what is already queued gets committed and acknowledged (within a grace
            # period); the rest stays unacknowledged in our broker session for our next start.
            deadline = time.monotonic() + stop_grace
            while time.monotonic() < deadline:
                batch = self._collect(0.0)
                if not batch:
                    break
                self._handle(batch)
        except _Abandon:
            log.warning("ingest: stopping with the database unreachable: unacknowledged messages stay "
                        "with the broker for the next start")
        finally:
            self.stop.set()  # the network thread must not reconnect after our DISCONNECT
            self._disconnect()
            self._net.join(10)
            self._drop_connection()


    def _log_minute(self, every: float = 60.0) -> None:
        """Once a minute: what the last minute brought (operators read rates from the journal)."""
        t0, before, dropped0, errors0 = self._minute
        now = time.monotonic()
        if now - t0 < every:
            return
        w, t = self.totals.written, self.totals
        log.info("ingest: last %.0f s: %d messages, %.0f readings/s, %d duplicates, %d conflicts, %d invalid, "
                 "%d QoS 0 dropped, %d database errors", now - t0, w.messages - before.messages,
                 (w.readings - before.readings) / (now - t0), w.duplicates - before.duplicates,
                 w.conflicts - before.conflicts, w.invalid - before.invalid, t.dropped_qos0 - dropped0,
                 t.db_errors - errors0)
        self._minute = (now, Outcome(**{f.name: getattr(w, f.name) for f in fields(Outcome) if f.name != "errors"}),
                        t.dropped_qos0, t.db_errors)

    def _disconnect(self, client: Any = None) -> None:
        """DISCONNECT; a retired instance's with session expiry 0: the broker forgets the session."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = None
        if self.retired:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        (client or self._client).disconnect(properties=props)


class _Abandon(Exception):
    """Stop requested while the database is unreachable."""


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
