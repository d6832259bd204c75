"""MQTT failures classified by reason code (agent/mqttcodes.py): the table, real Mosquitto refusals,
and the codes Mosquitto never sends (a scripted broker answering CONNECT with that CONNACK)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.cli import doctor
from agent.config import load_config
from agent.mqttcodes import Failure, classify, of_reason_code, reason_code
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker

V5, V311 = aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311

# (MQTT 5 reason code, failure): OASIS MQTT 5.0 table 3-1 (CONNACK) and 3-10 (DISCONNECT).
REASONS = [
    (0x00, None), (0x80, Failure.REFUSED), (0x81, Failure.REFUSED), (0x84, Failure.PROTOCOL_REJECTED),
    (0x85, Failure.CLIENT_ID_REJECTED), (0x86, Failure.BAD_CREDENTIALS), (0x87, Failure.NOT_AUTHORISED),
    (0x88, Failure.SERVER_UNAVAILABLE), (0x89, Failure.SERVER_UNAVAILABLE), (0x8A, Failure.NOT_AUTHORISED),
    (0x8B, Failure.SERVER_UNAVAILABLE), (0x8C, Failure.BAD_CREDENTIALS), (0x8E, Failure.SESSION_TAKEN_OVER),
    (0x95, Failure.REFUSED), (0x9C, Failure.SERVER_UNAVAILABLE), (0x9D, Failure.SERVER_UNAVAILABLE),
    (0x9F, Failure.SERVER_UNAVAILABLE),
]
# MQTT 3.1.1 CONNACK return codes (section 3.2.2.3) as paho maps them onto reason codes.
CONNACK_311 = [(1, 0x84, Failure.PROTOCOL_REJECTED), (2, 0x85, Failure.CLIENT_ID_REJECTED),
               (3, 0x88, Failure.SERVER_UNAVAILABLE), (4, 0x86, Failure.BAD_CREDENTIALS),
               (5, 0x87, Failure.NOT_AUTHORISED)]


@pytest.mark.parametrize(("code", "failure"), REASONS)
def test_reason_codes(code: int, failure: Failure | None) -> None:
    packet = PacketTypes.DISCONNECT if code in (0x8B, 0x8E) else PacketTypes.CONNACK  # DISCONNECT-only codes
    rc = ReasonCode(packet, identifier=code)  # type: ignore[no-untyped-call]
    assert reason_code(rc) == code
    assert of_reason_code(code) is failure
    if failure is not None:
        assert classify(MqttConnectError(rc)) is failure
        assert classify(MqttCodeError(rc, "Unexpected disconnection")) is failure


@pytest.mark.parametrize(("rc", "code", "failure"), CONNACK_311)
def test_mqtt311_connack_return_codes(rc: int, code: int, failure: Failure) -> None:
    assert reason_code(rc, connack=True) == code
    assert classify(MqttConnectError(rc)) is failure  # a client on paho's version 1 callbacks
    assert reason_code(rc) is None  # a bare int elsewhere is no reason code


@pytest.mark.parametrize(("rc", "failure"), [
    (MQTTErrorCode.MQTT_ERR_AUTH, Failure.BAD_CREDENTIALS), (MQTTErrorCode.MQTT_ERR_ACL_DENIED, Failure.NOT_AUTHORISED),
    (MQTTErrorCode.MQTT_ERR_TLS, Failure.TLS), (MQTTErrorCode.MQTT_ERR_CONN_REFUSED, Failure.REFUSED),
    (MQTTErrorCode.MQTT_ERR_CONN_LOST, Failure.CONNECTION), (MQTTErrorCode.MQTT_ERR_NO_CONN, Failure.CONNECTION),
])
def test_paho_error_codes(rc: MQTTErrorCode, failure: Failure) -> None:
    assert classify(MqttCodeError(rc, "Could not publish message")) is failure


def _reraised(err: BaseException) -> aiomqtt.MqttError:
    """What aiomqtt raises for a socket error in connect(): `MqttError(str(exc)) from None`."""
    try:
        try:
            raise err
        except OSError as exc:
            raise aiomqtt.MqttError(str(exc)) from None
    except aiomqtt.MqttError as e:
        return e


@pytest.mark.parametrize(("err", "tls", "failure"), [
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), True, Failure.TLS),
    (ssl.SSLError(1, "tlsv13 alert certificate required"), True, Failure.TLS),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True, Failure.NOT_TLS),
    (ConnectionResetError(104, "Connection reset by peer"), True, Failure.NOT_TLS),
    (ConnectionResetError(104, "Connection reset by peer"), False, Failure.CONNECTION),
    (ConnectionRefusedError(111, "Connection refused"), True, Failure.CONNECTION),
    (TimeoutError(), False, Failure.CONNECTION),
])
def test_socket_errors_by_type(err: OSError, tls: bool, failure: Failure) -> None:
    assert classify(_reraised(err), tls=tls) is failure  # found through the suppressed context
    assert classify(aiomqtt.MqttError("connection lost"), err, tls=tls) is failure  # paho's socket error


def _connect(port: int, protocol: aiomqtt.ProtocolVersion, username: str | None = None,
             password: str | None = None) -> BaseException | None:
    async def go() -> None:
        async with aiomqtt.Client("127.0.0.1", port, username=username, password=password, protocol=protocol,
                                  identifier=f"mqttcodes-{os.getpid()}", timeout=10):
            pass

    try:
        asyncio.run(go())
    except aiomqtt.MqttError as e:
        return e
    return None


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    pw = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "gw-test", "right"], check=True, capture_output=True)
    pw.chmod(0o644)  # mosquitto (dropping to its own user) must read it
    b = Broker(extra=f"allow_anonymous false\npassword_file {pw}\nuser root\n").start()
    yield b
    b.close()


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize(("username", "password"), [(None, None), ("gw-test", "wrong"), ("nobody", "right")])
def test_mosquitto_refusals(auth_broker: Broker, protocol: aiomqtt.ProtocolVersion, username: str | None,
                            password: str | None) -> None:
    # Mosquitto 2.0 answers a missing user and a wrong password alike: 5 (3.1.1) / 135 (MQTT 5).
    e = _connect(auth_broker.port, protocol, username, password)
    assert isinstance(e, MqttConnectError) and reason_code(e.rc) == 0x87
    assert classify(e) is Failure.NOT_AUTHORISED
    assert _connect(auth_broker.port, protocol, "gw-test", "right") is None


class ScriptedBroker:
    """A TCP peer that answers every CONNECT with one CONNACK return/reason code, then closes."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connects = 0
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    head = conn.recv(64)  # fixed header, "MQTT", protocol level: all in the first segment
                    if len(head) < 12:
                        continue  # a reachability probe (doctor's TCP check)
                    i = 1
                    while head[i] & 0x80:
                        i += 1
                    level = head[i + 7]
                    self.connects += 1
                    conn.sendall(bytes([0x20, 3, 0, self.code, 0]) if level == 5 else bytes([0x20, 2, 0, self.code]))
                    conn.recv(64)  # until the client closes
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("protocol", "code", "failure"), [
    # (3.1.1 return code 1 makes paho retry as MQTT 3.1 by itself: its own protocol fallback)
    *[(V311, rc, f) for rc, _, f in CONNACK_311 if rc != 1],
    (V5, 0x84, Failure.PROTOCOL_REJECTED), (V5, 0x85, Failure.CLIENT_ID_REJECTED),
    (V5, 0x86, Failure.BAD_CREDENTIALS), (V5, 0x88, Failure.SERVER_UNAVAILABLE),
    (V5, 0x89, Failure.SERVER_UNAVAILABLE), (V5, 0x8A, Failure.NOT_AUTHORISED), (V5, 0x9F, Failure.SERVER_UNAVAILABLE),
    (V5, 0x97, Failure.REFUSED),
])
def test_connack_codes_mosquitto_never_sends(protocol: aiomqtt.ProtocolVersion, code: int, failure: Failure) -> None:
    peer = ScriptedBroker(code)
    try:
        e = _connect(peer.port, protocol)
        assert isinstance(e, MqttConnectError)
        assert classify(e) is failure
    finally:
        peer.close()


@pytest.mark.parametrize(("code", "hint"), [
    (4, "check [uplink].username / password_file"),
    (5, "the broker may also deny client id 'edge-agent-gw-test'"),
    (3, "the broker takes no sessions for now"),
    (2, "the broker refuses client id 'edge-agent-gw-test'"),
    (0x84, "the broker refuses MQTT 5: check [uplink].protocol"),
    (0x88, "the broker takes no sessions for now"),
])
def test_doctor_hint_follows_the_reason_code(tmp_path: Path, code: int, hint: str) -> None:
    peer = ScriptedBroker(code)
    try:
        cfg = load_config(write_config(tmp_path / "agent.toml", broker_port=peer.port,
                                       uplink='protocol = "5"' if code > 5 else ""))
        broker = next(c for c in doctor.check_broker(cfg, timeout=5) if c.name == "broker")
        assert broker.verdict == "fail" and "MQTT CONNECT failed: [code:" in broker.detail
        assert broker.hint is not None and hint in broker.hint
    finally:
        peer.close()


def test_uplink_says_the_broker_takes_no_sessions(tmp_path: Path) -> None:
    peer = ScriptedBroker(0x88)
    devices = '[[devices]]\nid = "s1"\ndriver = "sim"\nfamily = "pms5003"\ninterval = "1s"\n'
    cfg = write_config(tmp_path / "agent.toml", broker_port=peer.port, devices=devices, uplink='protocol = "5"')
    agent = AgentProcess(cfg).start()
    try:
        agent.wait_log("refused the session: [code:136] Server unavailable; readings stay buffered "
                       "(the broker takes no sessions for now; retrying with backoff)")
        agent.wait_log("refused the session", count=2)  # and tries again
        assert "connected to" not in agent.output()
    finally:
        agent.close()
        peer.close()
