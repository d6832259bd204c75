"""`edge-agent receive`: the platform-side reference receiver (validate, dedupe, store, account)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliExit,
    add_config_arg,
    add_json_arg,
    add_tls_credential_args,
    load,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "receive",
        help="platform-side reference receiver: validate, dedupe, store, report gaps",
        description="Subscribe to P/# (QoS 1), validate every message against the published "
                    "schemas, dedupe readings on (gateway, epoch, seq), store them in SQLite and "
                    "report received / duplicates / invalid / gaps / unexplained missing seqs. "
                    "Exit 0 when everything adds up, 1 otherwise.",
    )
    p.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker (default: the agent config's [uplink])")
    p.add_argument("--topic-prefix", metavar="P",
                   help="the gateway's uplink.topic_prefix (default: from the agent config)")
    add_config_arg(p)
    p.add_argument("--db", metavar="PATH", default=":memory:", help="SQLite file for readings (default: memory)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C / SIGTERM)")
    p.add_argument("--every", type=float, default=0.0, metavar="S",
                   help="also report every S seconds (JSON lines on stdout with --json, else stderr)")
    p.add_argument("--since-epoch-start", action="store_true",
                   help="the gateway's epochs began while we listened: count missing seqs from 1")
    p.add_argument("--keep-session", action="store_true",
                   help="leave the persistent broker session (and its queue) behind on exit")
    add_broker_args(p)
    add_json_arg(p)
    p.set_defaults(func=receive)


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """How a platform-side tool reaches the broker (besides --broker): client id, TLS, credentials."""
    p.add_argument("--client-id", help="MQTT client id (default: derived from the prefix)")
    p.add_argument("--tls", action="store_true", help="TLS with the system trust store")
    add_tls_credential_args(p)


def _from_config(args: argparse.Namespace) -> None:
    """Fill --broker, --topic-prefix, TLS and credentials from the agent's config file."""
    if args.broker and args.topic_prefix:
        return
    if not args.broker and not args.topic_prefix and getattr(args, "config", None) is None:
        from agent.paths import default_config_path

        if not default_config_path().exists():
            raise CliExit(EXIT_USAGE, "receive: give --broker HOST:PORT and --topic-prefix P, or --config PATH")
    cfg = load(args)
    up = cfg.uplink
    args.broker = args.broker or f"{up.host}:{up.port}"
    args.topic_prefix = args.topic_prefix or cfg.topic_prefix
    if up.tls is not None and not (args.tls or args.tls_ca):
        args.tls = True
        args.tls_ca = str(up.tls.ca_file) if up.tls.ca_file else None
    if up.username and not args.username:
        args.username = up.username
        args.password_file = args.password_file or (str(up.password_file) if up.password_file else None)


def _endpoint(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    _from_config(args)
    return endpoint(args, "edge-receive-")


def endpoint(args: argparse.Namespace, client_prefix: str):  # type: ignore[no-untyped-def]
    """The receiver.Endpoint of --broker, --topic-prefix and add_broker_args()."""
    from agent.receiver import Endpoint

    host, sep, port = args.broker.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliExit(EXIT_USAGE, f"--broker: expected HOST:PORT, got {args.broker!r}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliExit(EXIT_USAGE, "--tls-cert and --tls-key go together")
    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise CliExit(EXIT_USAGE, f"--password-file: {e.strerror}: {args.password_file}") from None
    import hashlib

    cid = args.client_id or client_prefix + hashlib.sha256(args.topic_prefix.encode()).hexdigest()[:10]
    return Endpoint(host.strip("[]"), int(port), args.topic_prefix.rstrip("/"), cid,
                    args.tls_ca, args.tls_cert, args.tls_key, bool(args.tls),
                    args.username, password)


def receive(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from agent.logs import setup_logging
    from agent.receiver import Receiver, format_report, run_mqtt

    ep = _endpoint(args)
    setup_logging("warning")
    logging.getLogger("agent.receiver").setLevel(logging.INFO)
    rx = Receiver(args.db, since_epoch_start=args.since_epoch_start)
    subscribed: list[bool] = []

    def report(final: bool) -> dict[str, Any]:
        rep = rx.report()
        if final and not subscribed:  # nothing was checked: not a pass
            rep["ok"] = False
            rep["errors"].append(f"never subscribed: broker {ep.host}:{ep.port} not reachable or refused us")
        return rep

    def emit(final: bool) -> None:
        rep = report(final)
        if args.json:
            print(json.dumps({"final": final, **rep}, separators=(",", ":")), flush=True)
        else:
            print(format_report(rep), file=sys.stdout if final else sys.stderr, flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(run_mqtt(rx, ep, keep_session=args.keep_session,
                                            on_subscribed=lambda: subscribed.append(True)))
        deadline = None if args.seconds is None else loop.time() + args.seconds
        try:
            while not stop.is_set() and not task.done():
                wait = args.every or 3600.0
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()
                if deadline is not None and loop.time() >= deadline:
                    break
                if args.every and not stop.is_set():
                    emit(False)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        asyncio.run(main())
        rep = report(True)
        emit(True)
    finally:
        rx.close()
    return EXIT_OK if rep["ok"] else EXIT_FAILURE
