"""`edge-agent command send|keygen` (the platform side) and `edge-agent commands` (the gateway's audit log)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliExit,
    add_config_arg,
    add_json_arg,
    load,
    print_json,
    table,
)

DEFAULT_LIFETIME = 300.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.cli.receive import add_broker_args
    from agent.commands import VERBS

    g = sub.add_parser("command", help="platform side: sign and send a command to a gateway, make keys",
                       description="Sign commands with the platform's Ed25519 key and send them on P/commands "
                                   "(docs/PROTOCOL.md#commands).")
    gs = g.add_subparsers(dest="command_verb", metavar="ACTION")
    s = gs.add_parser("send", help="sign, publish on P/commands, wait for P/commands/result (exit 0: ok)",
                      description="Sign VERB as a JWT (EdDSA), publish it on P/commands (QoS 1) and wait for "
                                  "the gateway's answer on P/commands/result. Exit 0 when its status is ok, "
                                  "1 otherwise (refused, failed, rolled_back, no answer).")
    s.add_argument("verb", metavar="VERB", choices=VERBS, help=f"one of: {', '.join(VERBS)}")
    s.add_argument("--key", required=True, metavar="PEM", help="the platform's Ed25519 private key (PEM)")
    s.add_argument("--kid", help="key id in the JWS header (default: the key file name without extension, "
                                 "which must match the gateway's trusted_keys file name)")
    s.add_argument("--gateway", required=True, metavar="ID", help="the gateway id (the aud claim)")
    s.add_argument("--arg", action="append", default=[], metavar="K=V",
                   help="an args entry (V parsed as JSON when it parses, else a string); repeatable")
    s.add_argument("--config-file", metavar="F", help="config.apply: the complete new TOML file (args.config)")
    s.add_argument("--base", metavar="SHA256", help="config.apply: sha256 of the file it replaces "
                                                    "(default: asked first with config.get)")
    s.add_argument("--broker", metavar="HOST:PORT", default="127.0.0.1:1883", help="MQTT broker")
    s.add_argument("--topic-prefix", metavar="P", help="the gateway's topic prefix (default: edge/<ID>)")
    s.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME, metavar="S",
                   help=f"seconds until the command expires (default {DEFAULT_LIFETIME:g})")
    s.add_argument("--timeout", type=float, metavar="S",
                   help="seconds to wait for the result (default 30; config.apply 300)")
    add_broker_args(s)
    add_json_arg(s)
    s.set_defaults(func=send)
    k = gs.add_parser("keygen", help="make an Ed25519 key pair: NAME.pem (private, 0600) and NAME.pub",
                      description="Write NAME.pem (the platform's private signing key, mode 0600) and NAME.pub "
                                  "(the public key to list in the gateways' [commands] trusted_keys).")
    k.add_argument("name", metavar="NAME", help="path without extension; its file name is the kid")
    k.set_defaults(func=keygen)
    g.set_defaults(func=lambda a: _usage())
    a = sub.add_parser("commands", help="the last remote commands: who signed them, outcome, time",
                       description="The gateway's audit log of remote commands (P/commands), newest last, "
                                   "read from commands.db beside the buffer (works whether the agent runs or not).")
    add_config_arg(a)
    add_json_arg(a)
    a.add_argument("-n", "--last", type=int, default=20, metavar="N", help="how many (default 20)")
    a.set_defaults(func=commands)


def _usage() -> int:
    raise CliExit(EXIT_USAGE, "usage: edge-agent command {send,keygen} ... (see --help)")


# -- signing -------------------------------------------------------------------------------------
def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise CliExit(EXIT_USAGE, f"--key: {e.strerror}: {path}") from None
    except (ValueError, TypeError) as e:
        raise CliExit(EXIT_USAGE, f"--key: {path} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliExit(EXIT_USAGE, f"--key: {path} is not an Ed25519 key")
    return key


def sign(key: Any, kid: str, gateway: str, cmd: str, args: dict[str, Any], *, lifetime: float = DEFAULT_LIFETIME,
         jti: str | None = None, now: float | None = None) -> tuple[str, str]:
    """A signed command token and its jti."""
    import jwt

    now = time.time() if now is None else now
    import uuid

    jti = jti or str(uuid.uuid4())
    claims = {"aud": gateway, "iat": int(now), "exp": int(now + lifetime), "jti": jti, "cmd": cmd, "args": args}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid}), jti


def _parse_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliExit(EXIT_USAGE, f"--arg: expected K=V, got {item!r}")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


# -- send ----------------------------------------------------------------------------------------
async def exchange(ep: Any, tokens: list[tuple[str, str]], wait: float) -> dict[str, dict[str, Any]]:
    """Publish each token on P/commands and collect the results by jti (those that came within `wait` seconds)."""
    import asyncio

    import aiomqtt

    from agent.receiver import tls_context

    want = {jti for _, jti in tokens}
    got: dict[str, dict[str, Any]] = {}
    async with aiomqtt.Client(ep.host, ep.port, identifier=ep.client_id, username=ep.username,
                              password=ep.password, tls_context=tls_context(ep), keepalive=30, timeout=10) as c:
        await c.subscribe(f"{ep.prefix}/commands/result", qos=1)
        for token, _ in tokens:
            await c.publish(f"{ep.prefix}/commands", token.encode(), qos=1)
        try:
            async with asyncio.timeout(wait):
                async for m in c.messages:
                    try:
                        body = json.loads(m.payload if isinstance(m.payload, bytes) else str(m.payload))
                    except ValueError:
                        continue
                    if isinstance(body, dict) and body.get("jti") in want:
                        got[body["jti"]] = body
                        if want <= got.keys():
                            break
        except TimeoutError:
            pass
    return got


def send(args: argparse.Namespace) -> int:
    import asyncio

    from agent.cli.receive import endpoint

    key = load_private_key(Path(args.key))
    kid = args.kid or Path(args.key).name.split(".", 1)[0]
    cmd_args = _parse_args(args.arg)
    if args.config_file:
        try:
            cmd_args["config"] = Path(args.config_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliExit(EXIT_USAGE, f"--config-file: {e}") from None
    if args.base:
        cmd_args["base"] = args.base
    if args.verb == "config.apply" and "config" not in cmd_args:
        raise CliExit(EXIT_USAGE, "config.apply needs --config-file F (or --arg config=...)")
    args.topic_prefix = (args.topic_prefix or f"edge/{args.gateway}").rstrip("/")
    ep = endpoint(args, "edge-command-")
    timeout = args.timeout or (300.0 if args.verb == "config.apply" else 30.0)

    def ask(verb: str, a: dict[str, Any], wait: float) -> dict[str, Any]:
        token, jti = sign(key, kid, args.gateway, verb, a, lifetime=args.lifetime)
        try:
            got = asyncio.run(exchange(ep, [(token, jti)], wait))
        except Exception as e:  # aiomqtt.MqttError, OSError, ssl errors
            raise CliExit(EXIT_FAILURE, f"command: broker {ep.host}:{ep.port}: {e}") from None
        if jti not in got:
            raise CliExit(EXIT_FAILURE, f"command {verb} (jti {jti}): no result from {args.gateway} within "
                                        f"{wait:g} s (is it connected, with [commands] configured?)")
        return got[jti]

    if args.verb == "config.apply" and "base" not in cmd_args:
        got = ask("config.get", {}, 30.0)
        if got.get("status") != "ok":
            return _show(got, args.json)
        cmd_args["base"] = got["result"]["sha256"]
        print(f"base {cmd_args['base']} (the gateway's current file, from config.get)", file=sys.stderr)
    return _show(ask(args.verb, cmd_args, timeout), args.json)


def _show(res: dict[str, Any], as_json: bool) -> int:
    ok = res.get("status") == "ok"
    if as_json:
        print_json(res)
    else:
        head = f"{res.get('cmd')} {res.get('status')}"
        if res.get("reason"):
            head += f" ({res['reason']}: {res.get('detail', '')})"
        print(head, file=sys.stdout if ok else sys.stderr)
        if res.get("result") is not None:
            print(json.dumps(res["result"], indent=2, ensure_ascii=False))
    return EXIT_OK if ok else EXIT_FAILURE


# -- keygen --------------------------------------------------------------------------------------
def keygen(args: argparse.Namespace) -> int:
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    base = Path(args.name)
    priv, pub = base.with_name(base.name + ".pem"), base.with_name(base.name + ".pub")
    for p in (priv, pub):
        if p.exists():
            raise CliExit(EXIT_USAGE, f"{p} exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"{priv} (private: keep it on the platform, never on a gateway)\n{pub} (public: kid {base.name!r}, "
          "list it in the gateways' [commands] trusted_keys)")
    return EXIT_OK


# -- commands (audit log) -----------------------------------------------------------------------
def commands(args: argparse.Namespace) -> int:
    import sqlite3

    from agent.commands import read_audit, store_path
    from agent.model import parse_ts

    cfg = load(args)
    path = store_path(cfg.buffer.path)
    if not path.exists():
        rows: list[dict[str, Any]] = []
    else:
        try:
            rows = read_audit(path, max(1, args.last))
        except sqlite3.Error as e:
            raise CliExit(EXIT_FAILURE, f"commands: cannot read {path}: {e}") from None
    if args.json:
        print_json({"path": str(path), "enabled": cfg.commands is not None, "commands": rows})
        return EXIT_OK
    if cfg.commands is None:
        print("remote commands are off ([commands] is not configured)", file=sys.stderr)
    if not rows:
        print(f"no remote commands recorded ({path})")
        return EXIT_OK
    local = [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(parse_ts(r["ts"]))), r["cmd"] or "?",
              r["kid"] or "-", r["status"], r["reason"] or "", (r["jti"] or "-")[:36],
              "" if r["published"] else "not yet published", (r["detail"] or "")[:80]] for r in rows]
    print(table(local, ["time", "verb", "signed by", "outcome", "reason", "jti", "", "detail"]))
    return EXIT_OK
