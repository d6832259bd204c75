"""`edge-agent ingest`: the platform's ingest service into PostgreSQL (needs the `platform` extra)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliExit,
    add_json_arg,
    add_tls_credential_args,
    print_json,
    table,
)

DB_ENV = "EDGE_INGEST_DB"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ingest",
        help="platform: store every gateway's MQTT traffic in PostgreSQL (many instances share the load)",
        description="Subscribe to the gateways' topics through an MQTT 5 shared subscription, validate "
                    "every message, write readings, gaps, events, status and health to PostgreSQL "
                    "exactly once per (gateway, epoch, seq), and acknowledge each message to the broker "
                    "only after its transaction committed. Start any number of instances with the same "
                    "--group. Needs: pip install 'edge-agent[platform]'. See docs/PLATFORM.md.",
    )
    _db_arg(p)
    p.add_argument("--init", action="store_true", help="create or migrate the database schema, then exit")
    p.add_argument("--broker", metavar="URL", default="mqtt://127.0.0.1:1883",
                   help="mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS (default: %(default)s)")
    p.add_argument("--group", default="edge-ingest",
                   help="shared subscription group: instances of one group share the load (default: %(default)s)")
    p.add_argument("--client-id", metavar="ID",
                   help="MQTT client id, stable per instance so a restart resumes its broker session "
                        "(default: edge-ingest-<hostname>-<group>)")
    p.add_argument("--topics", metavar="FILTER", action="append",
                   help="topic filter, repeatable or comma-separated (default: edge/+/+, every gateway's "
                        "telemetry, events, status and health under the default prefix edge/<gateway>)")
    add_tls_credential_args(p)
    p.add_argument("--max-inflight", type=int, default=1000, metavar="N",
                   help="unacknowledged messages the broker may have out to this instance (MQTT 5 "
                        "Receive Maximum; bounds memory when the database is slow; default: %(default)s)")
    p.add_argument("--batch", type=int, default=500, metavar="N",
                   help="messages per database transaction at most (default: %(default)s)")
    p.add_argument("--session-expiry", default="7d", metavar="DURATION",
                   help="how long the broker keeps this instance's session and its share of the "
                        "messages while it is away (default: %(default)s)")
    p.add_argument("--retire", action="store_true",
                   help="remove an instance for good: stop it, then run this with its --client-id: it "
                        "unsubscribes, writes what the broker kept in that session, ends the session, exits")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=ingest)
    sub2 = p.add_subparsers(dest="ingest_verb", metavar="VERB")
    r = sub2.add_parser("report", help="accounting from the tables: received, duplicates, missing, gaps, "
                                       "unexplained, conflicts per gateway and epoch",
                        description="Compute from the database what `edge-agent receive` reports, per gateway "
                                    "and epoch, over every instance's writes. Exit 0 when nothing is "
                                    "unexplained, conflicting or invalid and the gaps balance, else 1.")
    _db_arg(r)
    r.add_argument("--gateway", metavar="ID", help="only this gateway")
    r.add_argument("--since-epoch-start", action="store_true",
                   help="the database saw every epoch from its start: count missing seqs from 1")
    add_json_arg(r)
    r.set_defaults(func=report)


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", default=argparse.SUPPRESS,
                   help=f"postgresql://USER@HOST:PORT/DB (default: ${DB_ENV})")


def _db(args: argparse.Namespace) -> str:
    url = getattr(args, "db", None) or os.environ.get(DB_ENV)
    if not url:
        raise CliExit(EXIT_USAGE, f"ingest: give --db postgresql://… or set ${DB_ENV}")
    return str(url)


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise CliExit(EXIT_FAILURE, "ingest needs the platform extra: pip install 'edge-agent[platform]'") from None
    return psycopg


def _connect(url: str) -> Any:
    psycopg = _driver()
    from agent.ingest.service import redact

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise CliExit(EXIT_FAILURE, f"ingest: cannot connect to {redact(url)}: {str(e).strip()}") from None


def _settings(args: argparse.Namespace, db: str) -> Any:
    import ssl

    from agent.ingest.service import Settings
    from agent.units import parse_duration

    u = urlsplit(args.broker if "://" in args.broker else "mqtt://" + args.broker)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise CliExit(EXIT_USAGE, f"--broker: expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {args.broker!r}")
    tls = u.scheme == "mqtts" or bool(args.tls_ca)
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError:
        raise CliExit(EXIT_USAGE, f"--broker: bad port in {args.broker!r}") from None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliExit(EXIT_USAGE, "--tls-cert and --tls-key go together")
    ctx = None
    if tls or args.tls_cert:
        try:
            ctx = ssl.create_default_context(cafile=args.tls_ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if args.tls_cert:
                ctx.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise CliExit(EXIT_USAGE, f"ingest: TLS files: {e}") from None
    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise CliExit(EXIT_USAGE, f"--password-file: {e.strerror}: {args.password_file}") from None
    topics = tuple(t.strip() for arg in (args.topics or ["edge/+/+"]) for t in arg.split(",") if t.strip())
    if args.max_inflight < 1 or args.max_inflight > 65535:
        raise CliExit(EXIT_USAGE, "--max-inflight: 1 to 65535")
    if args.batch < 1:
        raise CliExit(EXIT_USAGE, "--batch: at least 1")
    try:
        expiry = int(parse_duration(args.session_expiry))
    except (ValueError, TypeError) as e:
        raise CliExit(EXIT_USAGE, f"--session-expiry: {e}") from None
    if args.retire and not args.client_id:
        raise CliExit(EXIT_USAGE, "--retire: give the --client-id of the instance to retire")
    cid = args.client_id or f"edge-ingest-{socket.gethostname()}-{args.group}"
    return Settings(db=db, host=u.hostname, port=port, group=args.group, client_id=cid, topics=topics,
                    tls=ctx, username=args.username or u.username, password=password,
                    max_inflight=args.max_inflight, batch_max=args.batch, session_expiry=expiry,
                    retire=args.retire)


def ingest(args: argparse.Namespace) -> int:
    db = _db(args)
    if args.init:
        from agent.ingest.schema import init

        conn = _connect(db)
        try:
            done = init(conn)
        except Exception as e:
            raise CliExit(EXIT_FAILURE, f"ingest --init: {e}") from None
        finally:
            conn.close()
        if done["from_version"] == done["version"]:
            print(f"schema is up to date (version {done['version']})")
        elif done["from_version"] == 0:
            print(f"schema created (version {done['version']})")
        else:
            print(f"schema migrated from version {done['from_version']} to {done['version']}")
        return EXIT_OK
    settings = _settings(args, db)
    _driver()
    return _serve(settings, args.log_level)


def _serve(settings: Any, level: str) -> int:
    import logging
    import signal

    from agent.ingest.service import FatalError, Ingestor
    from agent.logs import setup_logging

    setup_logging("warning")
    logging.getLogger("agent.ingest").setLevel(level.upper())
    ing = Ingestor(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ing.stop.set())
    try:
        ing.run()
    except FatalError as e:
        print(f"ingest: {e}", file=sys.stderr)
        return EXIT_FAILURE
    t = ing.totals.written
    if ing.retired:
        print(f"ingest: retired {settings.client_id}: {t.messages} message(s) drained into the database, "
              "its broker session ended", file=sys.stderr)
        return EXIT_OK
    logging.getLogger("agent.ingest").info(
        "ingest: stopped after %d messages: %d readings stored, %d duplicates, %d conflicts, %d invalid",
        t.messages, t.readings, t.duplicates, t.conflicts, t.invalid)
    return EXIT_OK


def report(args: argparse.Namespace) -> int:
    _driver()
    from agent.ingest.store import report as compute

    conn = _connect(_db(args))
    try:
        rep = compute(conn, args.gateway, since_epoch_start=args.since_epoch_start)
    except Exception as e:
        raise CliExit(EXIT_FAILURE, f"ingest report: {str(e).strip()} (did you run edge-agent ingest --init?)") \
            from None
    finally:
        conn.close()
    if args.json:
        print_json(rep)
    else:
        print(format_report(rep))
    return EXIT_OK if rep["ok"] else EXIT_FAILURE


def format_report(rep: dict[str, Any]) -> str:
    """A table per gateway and epoch, then the totals and a verdict."""
    rows = [[e["gateway"], e["epoch"], str(e["received"]), str(e["duplicates"]), str(e["missing"]),
             str(e["gap_readings"]), str(e["unexplained"]), str(e["gap_balance"]),
             str(e["conflicts"] + e["gap_conflicts"])] for e in rep["epochs"]]
    lines = [table(rows, ["GATEWAY", "EPOCH", "RECEIVED", "DUPLICATES", "MISSING", "IN GAPS",
                          "UNEXPLAINED", "GAP BALANCE", "CONFLICTS"])] if rows else ["no readings yet"]
    lines.append(
        f"{rep['gateways']} gateway(s): received {rep['received']}, duplicates dropped {rep['duplicates']}, "
        f"conflicts {rep['conflicts'] + rep['gap_conflicts']}, invalid {rep['invalid']}; gaps {rep['gaps']} "
        f"({rep['gap_readings']} readings lost, balance {rep['gap_balance']}); missing {rep['missing']}, "
        f"unexplained {rep['unexplained']}")
    if rep["quarantines_unknown"]:
        lines.append(f"{rep['quarantines_unknown']} quarantined buffer(s) with an unknown loss")
    lines.append("OK" if rep["ok"] else "NOT OK")
    return "\n".join(lines)
