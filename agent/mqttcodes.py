"""Why an MQTT connection failed, from its reason code (never from the wording of a message).

paho reports a refused CONNECT as a `ReasonCode` (MQTT 5 codes; an MQTT 3.1.1 CONNACK return code
is mapped onto them: 1 -> 132, 2 -> 133, 3 -> 136, 4 -> 134, 5 -> 135), a failed call as an
`MQTTErrorCode`; aiomqtt carries either as `MqttCodeError.rc`. A TLS or socket error is classified
by its exception type.
"""

from __future__ import annotations

import ssl
from enum import StrEnum

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode


class Failure(StrEnum):
    """What a failed MQTT connection tells the operator to look at."""

    BAD_CREDENTIALS = "bad_credentials"
    NOT_AUTHORISED = "not_authorised"
    SERVER_UNAVAILABLE = "server_unavailable"
    CLIENT_ID_REJECTED = "client_id_rejected"
    PROTOCOL_REJECTED = "protocol_rejected"
    SESSION_TAKEN_OVER = "session_taken_over"
    REFUSED = "refused"  # another refusal by the broker (a reason code >= 128 not listed below)
    TLS = "tls"  # the TLS handshake or a certificate failed
    NOT_TLS = "not_tls"  # the peer dropped the TLS handshake: likely not a TLS listener
    CONNECTION = "connection"  # unreachable, reset, timed out, closed


SESSION_TAKEN_OVER = 142

# MQTT 5 reason codes (CONNACK and DISCONNECT, OASIS MQTT 5.0 section 2.4) -> failure.
REASON_CODES: dict[int, Failure] = {
    0x84: Failure.PROTOCOL_REJECTED,  # Unsupported Protocol Version
    0x85: Failure.CLIENT_ID_REJECTED,  # Client Identifier not valid
    0x86: Failure.BAD_CREDENTIALS,  # Bad User Name or Password
    0x87: Failure.NOT_AUTHORISED,  # Not authorized
    0x88: Failure.SERVER_UNAVAILABLE,  # Server unavailable
    0x89: Failure.SERVER_UNAVAILABLE,  # Server busy
    0x8A: Failure.NOT_AUTHORISED,  # Banned
    0x8B: Failure.SERVER_UNAVAILABLE,  # Server shutting down
    0x8C: Failure.BAD_CREDENTIALS,  # Bad authentication method
    SESSION_TAKEN_OVER: Failure.SESSION_TAKEN_OVER,  # Session taken over
    0x9C: Failure.SERVER_UNAVAILABLE,  # Use another server
    0x9D: Failure.SERVER_UNAVAILABLE,  # Server moved
    0x9F: Failure.SERVER_UNAVAILABLE,  # Connection rate exceeded
}

# MQTT 3.1.1 CONNACK return codes (section 3.2.2.3), for a client that hands over the bare int.
CONNACK_CODES: dict[int, int] = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}

# paho's own error codes (a call that failed locally or a connection that went away).
ERROR_CODES: dict[MQTTErrorCode, Failure] = {
    MQTTErrorCode.MQTT_ERR_CONN_REFUSED: Failure.REFUSED,
    MQTTErrorCode.MQTT_ERR_AUTH: Failure.BAD_CREDENTIALS,
    MQTTErrorCode.MQTT_ERR_ACL_DENIED: Failure.NOT_AUTHORISED,
    MQTTErrorCode.MQTT_ERR_TLS: Failure.TLS,
    MQTTErrorCode.MQTT_ERR_PROTOCOL: Failure.PROTOCOL_REJECTED,
}


def of_reason_code(code: int) -> Failure | None:
    """The failure an MQTT 5 reason code names; None for success codes (< 128)."""
    if code < 0x80:
        return None
    return REASON_CODES.get(code, Failure.REFUSED)


def reason_code(rc: object, *, connack: bool = False) -> int | None:
    """The MQTT 5 reason code in a paho `ReasonCode` (with `connack`: also a bare 3.1.1 return code)."""
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    if connack and isinstance(rc, int) and not isinstance(rc, MQTTErrorCode):
        return CONNACK_CODES.get(rc, 0x80 if rc else 0)
    return None


def _chain(e: BaseException | None) -> list[BaseException]:
    """`e` and what it was raised from or during (aiomqtt re-raises socket errors `from None`)."""
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def classify(e: BaseException | None, transport: BaseException | None = None, *, tls: bool = False) -> Failure:
    """The failure behind `e` (an aiomqtt/paho error, an OSError). `transport`: the socket error paho
    met underneath (it says more than the "connection lost" it turns into); `tls`: TLS is configured
    and no session came up, so a peer that resets or drops the connection refused the handshake."""
    from aiomqtt.exceptions import MqttCodeError, MqttConnectError

    errors = _chain(transport) + _chain(e)
    for err in errors:
        if isinstance(err, MqttCodeError):
            rc = err.rc
            if isinstance(rc, MQTTErrorCode):
                if rc in ERROR_CODES:
                    return ERROR_CODES[rc]
                continue
            code = reason_code(rc, connack=isinstance(err, MqttConnectError))
            if code is not None and (f := of_reason_code(code)) is not None:
                return f
    for err in errors:
        if tls and isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError | BrokenPipeError):
            return Failure.NOT_TLS
        if isinstance(err, ssl.SSLError | ssl.CertificateError):
            return Failure.TLS
    return Failure.CONNECTION


CREDENTIALS = frozenset({Failure.BAD_CREDENTIALS, Failure.NOT_AUTHORISED})
