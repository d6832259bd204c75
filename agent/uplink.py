"""MQTT uplink: SQLite outbox -> `P/telemetry` batches, QoS 1, pipelined, delete on PUBACK.

One connection at a time, reconnecting with jittered exponential backoff forever. After a
reconnect everything not yet acknowledged is sent again from the outbox, byte-identical
(the platform dedupes on (gateway, epoch, seq)). TLS, when configured, is never downgraded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

from agent import __version__
from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.errors import ConfigError, UplinkError
from agent.model import format_ts
from agent.mqttcodes import CREDENTIALS, Failure, classify
from agent.pipeline import Pipeline
from agent.states import UplinkState
from agent.ticks import raise_if_cancelling, sleep_to_tick

log = logging.getLogger(__name__)

# paho's keepalive check (PINGREQ due, PINGRESP overdue) runs on this grid; a ping goes out at
# most this late, well inside the broker's 1.5 x keepalive grace (keepalive < 20 s: every 1 s).
MISC_PERIOD = 5.0


@dataclass(slots=True)
class UplinkStats:
    state: UplinkState = UplinkState.STARTING
    connected_since: float | None = None
    last_error: str = ""
    backoff_until: float | None = None
    connects: int = 0
    reconnects: int = 0
    published: int = 0  # telemetry messages
    acked: int = 0
    readings_published: int = 0
    readings_acked: int = 0
    events_published: int = 0
    last_puback: float | None = None
    inflight: int = 0


def build_tls_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    """SSLContext for the configured TLS (server verification always on), or None for plain TCP."""
    tls = cfg.uplink.tls
    if tls is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError([f"uplink.tls: {e}"]) from e
    return ctx


def read_password(cfg: AgentConfig) -> str | None:
    pf = cfg.uplink.password_file
    if pf is None:
        return None
    try:
        return pf.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ConfigError([f"uplink.password_file: cannot read {pf}: {e.strerror}"]) from e


# What a broker's refusal (other than of the credentials) asks the operator to do.
REFUSAL_HINTS: dict[Failure, str] = {
    Failure.SERVER_UNAVAILABLE: "the broker takes no sessions for now; retrying with backoff",
    Failure.CLIENT_ID_REJECTED: "check uplink.client_id",
    Failure.PROTOCOL_REJECTED: "check uplink.protocol",
    Failure.REFUSED: "ask the platform why",
}


class _MqttLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's log: its socket/TLS errors are the only trace of a refused client certificate."""

    def __init__(self, uplink: Uplink) -> None:
        super().__init__(logging.getLogger("aiomqtt"), {})
        self.uplink = uplink

    def log(self, level: int, msg: object, *args: Any, **kw: Any) -> None:
        if level >= logging.ERROR:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = str(msg)
            err = next((a for a in args if isinstance(a, BaseException)), None)
            if self.uplink._transport_error(text, err):
                return  # reported by the uplink itself, with context
        super().log(level, msg, *args, **kw)


class _Client(aiomqtt.Client):
    """aiomqtt's client with paho's housekeeping (keepalive) on the shared timer grid."""

    async def _misc_loop(self) -> None:  # aiomqtt: `loop_misc()` then sleep(1), forever
        period = 1.0 if self._client.keepalive < 20 else MISC_PERIOD
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await sleep_to_tick(period)


class _ReconnectNow(Exception):
    """reconnect_now() ends the session with this."""


def _first(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    e: BaseException = eg
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


class Uplink:
    """Publishes the outbox to the broker until cancelled."""

    def __init__(
        self,
        cfg: AgentConfig,
        pipeline: Pipeline,
        *,
        health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.prefix = cfg.topic_prefix
        self.health = health
        self.stats = UplinkStats()
        self._client: aiomqtt.Client | None = None
        self._connecting: aiomqtt.Client | None = None
        self._last_transport_error = ""
        self._last_transport_exc: BaseException | None = None  # what paho's socket raised, for classify()
        self._mqtt_log = _MqttLog(self)
        self._tls = build_tls_context(cfg)
        self._password = read_password(cfg)
        self.connected = asyncio.Event()
        self._acked_upto = 0  # highest seq whose PUBACK came in
        self._progress = asyncio.Event()  # set by every PUBACK
        self._reconnect = asyncio.Event()  # reconnect_now(): end the session / the backoff wait
        self._backoff = Backoff(cfg.uplink.backoff_initial, cfg.uplink.backoff_max)
        # P/commands (agent/commands.py): called with (payload, retained) for each message; None: not subscribed
        self.on_command: Callable[[bytes, bool], None] | None = None
        self._head = (
            '{"v":1,"gateway":' + json.dumps(cfg.gateway.id) + ',"epoch":'
            + json.dumps(pipeline.outbox.epoch) + ',"readings":['
        ).encode()

    # -- payloads -----------------------------------------------------------------------
    def _status(self, state: str, reason: str = "lost") -> bytes:
        body: dict[str, Any] = {
            "v": 1, "state": state, "gateway": self.cfg.gateway.id, "ts": format_ts(time.time()),
        }
        if state == "offline":
            body["reason"] = reason  # "lost": the broker published the will; "shutdown": we did
        if state == "online":
            body.update(version=__version__, config_digest=self.cfg.digest(),
                        epoch=self.pipeline.outbox.epoch)
        return json.dumps(body, separators=(",", ":")).encode()

    def _client_for_session(self) -> aiomqtt.Client:
        up = self.cfg.uplink
        will = aiomqtt.Will(f"{self.prefix}/status", self._status("offline"), qos=1, retain=True)
        client = _Client(
            up.host,
            up.port,
            username=up.username,
            password=self._password,
            identifier=self.cfg.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if up.protocol == "5" else aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=True if up.protocol != "5" else None,
            keepalive=up.keepalive,
            timeout=10,
            max_inflight_messages=up.max_inflight + 4,
            tls_context=self._tls,
            logger=self._mqtt_log,  # type: ignore[arg-type]
        )
        # Our window is the intended number of pending publishes: no "pending publish calls" warnings.
        client.pending_calls_threshold = up.max_inflight + 4
        return client

    # -- main loop ----------------------------------------------------------------------
    async def run(self) -> None:
        backoff = self._backoff
        while True:
            self.stats.state = UplinkState.CONNECTING
            self._reconnect.clear()  # this attempt is the reconnect asked for
            client = self._client_for_session()
            self._connecting = client
            self._last_transport_error = ""
            self._last_transport_exc = None
            try:
                async with client:
                    self._client = client
                    backoff.reset()
                    await self._session(client)
            except* _ReconnectNow:
                self.stats.connected_since = None
                log.info("uplink: reconnecting now (asked for)")
            except* ssl.SSLError as eg:
                self._lost(f"TLS: {_first(eg)}", _first(eg))
            except* (aiomqtt.MqttError, OSError, TimeoutError) as eg:
                self._lost(str(_first(eg)), _first(eg))
            finally:
                # aiomqtt leaves the reason of an unexpected disconnect in a future nobody awaits
                # once the session is over: retrieve it (no "exception was never retrieved").
                gone = getattr(client, "_disconnected", None)
                if isinstance(gone, asyncio.Future) and gone.done() and not gone.cancelled():
                    gone.exception()
                self._client = self._connecting = None
                self.connected.clear()
                self._progress.set()  # a settle() in progress stops waiting
                self.stats.inflight = 0
                await self.pipeline.call(self.pipeline.outbox.release_events)
            raise_if_cancelling()  # a stop that a connect timeout swallowed: no reconnect
            if self._reconnect.is_set():
                backoff.reset()
                continue
            delay = backoff.next()
            self.stats.state = UplinkState.BACKOFF
            self.stats.backoff_until = time.time() + delay
            try:
                async with asyncio.timeout(delay):
                    await self._reconnect.wait()
                backoff.reset()
            except TimeoutError:
                pass

    def reconnect_now(self) -> None:
        """Reset the reconnect backoff and reconnect at once (a session in progress is closed first)."""
        self._backoff.reset()
        self._reconnect.set()

    def _transport_error(self, msg: str, err: BaseException | None = None) -> bool:
        """paho hit a socket/TLS error `err`; while connecting, fail the attempt now. True: handled."""
        client = self._connecting
        if client is None or self._client is not None:
            return False
        self._last_transport_exc = err
        self._last_transport_error = msg.removeprefix("failed to receive on socket: ")
        fut = getattr(client, "_connected", None)  # aiomqtt<3 waits for CONNACK on this future
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_exception(aiomqtt.MqttError(self._last_transport_error))
        return True

    def _lost(self, why: str, error: BaseException | None = None) -> Failure:
        """Record and log why the session ended or never began; the failure its reason code names."""
        was = self.stats.connected_since is not None
        self.stats.connected_since = None
        if self._last_transport_error and self._last_transport_error not in why:
            why = f"{why} ({self._last_transport_error})"
        self.stats.last_error = why
        failure = classify(error, self._last_transport_exc, tls=self._tls is not None and not was)
        level = logging.WARNING if was or self.stats.connects == 0 else logging.INFO
        host, port = self.cfg.uplink.host, self.cfg.uplink.port
        if self._tls is not None and not was and failure in (Failure.TLS, Failure.NOT_TLS):
            hint = "; is the port a TLS listener?" if failure is Failure.NOT_TLS else ""
            log.warning("uplink: TLS with %s:%d failed: %s%s; no fallback to plaintext, readings "
                        "stay buffered (check uplink.tls)", host, port, why, hint)
            return failure
        if failure in CREDENTIALS:
            log.warning("uplink: %s:%d refused the credentials: %s; readings stay buffered "
                        "(check uplink.username and uplink.password_file)", host, port, why)
            return failure
        if failure in REFUSAL_HINTS:
            log.log(level, "uplink: %s:%d refused the session: %s; readings stay buffered (%s)", host, port, why,
                    REFUSAL_HINTS[failure])
            return failure
        log.log(level, "uplink: %s %s:%d: %s", "lost" if was else "cannot reach", host, port, why)
        return failure

    async def _session(self, client: aiomqtt.Client) -> None:
        st = self.stats
        if st.connects:
            st.reconnects += 1
        st.connects += 1
        st.state = UplinkState.CONNECTED
        st.connected_since = time.time()
        st.backoff_until = None
        st.last_error = ""
        log.info("uplink: connected to %s:%d", self.cfg.uplink.host, self.cfg.uplink.port)
        raise_if_cancelling()  # connect and birth go through wait_for: a stop must not be lost there
        await client.publish(f"{self.prefix}/status", self._status("online"), qos=1, retain=True)
        raise_if_cancelling()
        if self.on_command is not None:
            await client.subscribe(f"{self.prefix}/commands", qos=1)
            raise_if_cancelling()
            log.debug("uplink: subscribed to %s/commands", self.prefix)
        self.connected.set()
        # Not a TaskGroup: on CPython 3.11 a child failing while the group waits in __aexit__
        # leaves this task's cancelling() count raised for good, and a stop could no longer be
        # told from that (see raise_if_cancelling).
        senders = [asyncio.create_task(self._send_telemetry(client)), asyncio.create_task(self._send_events(client))]
        if self.health is not None:
            senders.append(asyncio.create_task(self._send_health(client)))
        if self.on_command is not None:
            senders.append(asyncio.create_task(self._receive_commands(client, self.on_command)))
        senders.append(asyncio.create_task(self._watch_reconnect()))
        try:
            done, _ = await asyncio.wait(senders, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in senders:
                t.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (e := t.exception()) is not None:
                raise e

    async def _send_telemetry(self, client: aiomqtt.Client) -> None:
        up = self.cfg.uplink
        pipe = self.pipeline
        window = asyncio.Semaphore(up.max_inflight)
        topic = f"{self.prefix}/telemetry"
        cursor = 0  # everything still in the outbox is unacknowledged: send from the start
        failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def publish(payload: bytes, lo: int, hi: int, n: int) -> None:
            try:
                await client.publish(topic, payload, qos=1, timeout=60)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failure.done():
                    failure.set_exception(e)
                return
            finally:
                window.release()
                self.stats.inflight -= 1
            pipe.ack(lo, hi)
            self._acked_upto = max(self._acked_upto, hi)
            self._progress.set()
            self.stats.acked += 1
            self.stats.readings_acked += n
            self.stats.last_puback = time.time()

        tasks: set[asyncio.Task[None]] = set()
        limit = up.batch_max_readings * 4
        caught_up = False  # the last fetch returned everything committed before it
        try:
            while True:
                rows = None
                if caught_up and not pipe.new_data.is_set():
                    token = pipe.want_rows(cursor, limit)  # fetched along with the next commit
                    waiter: asyncio.Future[Any] = asyncio.ensure_future(pipe.new_data.wait())
                    await asyncio.wait([waiter, failure], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if failure.done():
                        failure.result()
                    pipe.new_data.clear()
                    rows = pipe.take_rows(token)
                else:
                    pipe.new_data.clear()
                if rows is None:
                    rows = await pipe.read(pipe.outbox.fetch_for_send, cursor, limit)
                caught_up = len(rows) < limit
                if rows:
                    await pipe.durable(urgent=not caught_up)  # synchronous=NORMAL: on disk first
                for chunk in self._batches(rows):
                    await window.acquire()
                    if failure.done():
                        failure.result()
                    lo, hi = chunk[0][0], chunk[-1][0]
                    payload = self._head + b",".join(p for _, p in chunk) + b"]}"
                    self.stats.inflight += 1
                    self.stats.published += 1
                    self.stats.readings_published += len(chunk)
                    t = asyncio.create_task(publish(payload, lo, hi, len(chunk)))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    cursor = hi
        finally:
            pipe.take_rows(0)  # withdraw a pending wish
            for t in tasks:
                t.cancel()
            if not failure.done():
                failure.cancel()
            else:
                failure.exception()  # retrieved: no "never retrieved" warning

    def _batches(self, rows: list[tuple[int, str]]) -> list[list[tuple[int, bytes]]]:
        up = self.cfg.uplink
        limit = up.batch_max_bytes - len(self._head) - 2
        out: list[list[tuple[int, bytes]]] = []
        cur: list[tuple[int, bytes]] = []
        size = 0
        for seq, text in rows:
            b = text.encode()
            if cur and (len(cur) >= up.batch_max_readings or size + len(b) + 1 > limit):
                out.append(cur)
                cur, size = [], 0
            cur.append((seq, b))
            size += len(b) + 1
        if cur:
            out.append(cur)
        return out

    async def _send_events(self, client: aiomqtt.Client) -> None:
        pipe = self.pipeline
        topic = f"{self.prefix}/events"
        while True:
            pipe.new_events.clear()
            rows = await pipe.read(pipe.outbox.fetch_events, 100)
            if not rows:
                await pipe.new_events.wait()
                continue
            await pipe.durable()
            for eid, payload in rows:
                await client.publish(topic, payload.encode(), qos=1, timeout=60)
                raise_if_cancelling()
                await pipe.read(pipe.outbox.ack_event, eid)
                self.stats.events_published += 1

    async def _send_health(self, client: aiomqtt.Client) -> None:
        assert self.health is not None
        topic = f"{self.prefix}/health"
        interval = self.cfg.health_every
        while True:
            body = await self.health()
            await client.publish(topic, json.dumps(body, separators=(",", ":")).encode(), qos=0)
            raise_if_cancelling()
            await (sleep_to_tick(interval) if interval >= 10 else asyncio.sleep(interval))

    async def _receive_commands(self, client: aiomqtt.Client, handler: Callable[[bytes, bool], None]) -> None:
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            handler(payload, bool(m.retain))

    async def _watch_reconnect(self) -> None:
        await self._reconnect.wait()
        raise _ReconnectNow()

    async def publish(self, suffix: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish on `P/<suffix>` in the current session; UplinkError when not connected or it fails."""
        c = self._client
        if c is None or not self.connected.is_set():
            raise UplinkError("uplink not connected")
        try:
            await c.publish(f"{self.prefix}/{suffix}", payload, qos=qos, timeout=10)
        except (aiomqtt.MqttError, OSError) as e:
            raise UplinkError(str(e)) from e

    async def settle(self) -> bool:
        """Clean shutdown: wait until every committed reading is acknowledged (bound it by the caller).

        Without it a restart sends the last in-flight batches again (harmless duplicates, but ours
        to avoid). False at once if not connected: the rest stays buffered.
        """
        outbox = self.pipeline.outbox
        while not (self._acked_upto >= outbox.next_seq - 1 or outbox.depth == 0):
            if not self.connected.is_set():
                return False
            self._progress.clear()
            await self._progress.wait()
        return True

    async def publish_offline(self) -> None:
        """Clean shutdown: retained offline status, best effort."""
        c = self._client
        if c is None:
            return
        try:
            await c.publish(f"{self.prefix}/status", self._status("offline", "shutdown"), qos=1,
                            retain=True, timeout=2)
        except (aiomqtt.MqttError, TimeoutError, OSError):
            pass
