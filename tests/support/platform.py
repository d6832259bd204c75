"""The platform side of remote commands for tests: a signing key, a publisher, the results seen."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until

COMMANDS_SECTION = """
[commands]
trusted_keys = ["platform.pub"]
{extra}
"""


def make_key(directory: Path, name: str = "platform") -> Ed25519PrivateKey:
    """An Ed25519 key pair: NAME.pem (private) and NAME.pub (public) in `directory`."""
    key = Ed25519PrivateKey.generate()
    (directory / f"{name}.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(claims: dict[str, Any], secret: bytes, kid: str = "platform") -> str:
    """An HMAC-SHA256 JWS keyed with `secret` (the public key PEM in an alg-confusion attack)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def none_token(claims: dict[str, Any], kid: str = "platform") -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


class Platform:
    """Signs commands for one gateway and publishes them on its P/commands; records P/commands/result."""

    def __init__(self, key: Ed25519PrivateKey, port: int, gateway: str = "gw-test", kid: str = "platform") -> None:
        self.key, self.port, self.gateway, self.kid = key, port, gateway, kid
        self.prefix = f"edge/{gateway}"
        self.sub = Subscriber("127.0.0.1", port, f"{self.prefix}/#")
        self.pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-platform-{id(self)}")
        self.pub.connect("127.0.0.1", port)
        self.pub.loop_start()

    def claims(self, cmd: str, args: dict[str, Any] | None = None, *, lifetime: float = 300,
               **over: Any) -> dict[str, Any]:
        now = int(time.time())
        c: dict[str, Any] = {"aud": self.gateway, "iat": now, "exp": now + int(lifetime), "jti": str(uuid.uuid4()),
                             "cmd": cmd, "args": args or {}}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, claims: dict[str, Any], *, key: Ed25519PrivateKey | None = None, kid: str | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="EdDSA", headers={"kid": kid or self.kid})

    def send(self, payload: str | bytes, *, retain: bool = False) -> None:
        info = self.pub.publish(f"{self.prefix}/commands", payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def command(self, cmd: str, args: dict[str, Any] | None = None, **over: Any) -> str:
        """Sign and send; the jti."""
        c = self.claims(cmd, args, **over)
        self.send(self.token(c))
        return str(c["jti"])

    def results(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on("/commands/result")]

    def result(self, jti: str, timeout: float = 30.0) -> dict[str, Any]:
        def found() -> bool:
            return any(r.get("jti") == jti for r in self.results())

        wait_until(found, timeout, f"the result of {jti}")
        return next(r for r in self.results() if r.get("jti") == jti)

    def events(self, type_: str = "command") -> list[dict[str, Any]]:
        return [e for e in (m.json() for m in self.sub.on("/events")) if e.get("type") == type_]

    def close(self) -> None:
        self.pub.loop_stop()
        self.pub.disconnect()
        self.sub.close()
