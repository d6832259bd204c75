"""`edge-agent uplink reconnect`: the technician's "try now" instead of waiting out the backoff."""

from __future__ import annotations

import argparse
import time
from typing import Any

from agent.cli.common import EXIT_BUFFERING, EXIT_OK, EXIT_USAGE, CliExit, add_config_arg, add_json_arg, print_json

WAIT = 10.0  # how long to watch the attempt by default


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("uplink", help="act on the running agent's MQTT uplink")
    add_config_arg(p)
    usub = p.add_subparsers(dest="uplink_verb", metavar="ACTION")
    r = usub.add_parser(
        "reconnect",
        help="reset the reconnect backoff and try the broker now",
        description="Ask the running agent to reset its reconnect backoff and connect at once, then "
        "watch the attempt. Exit 0 once connected, 4 if still not connected after --wait seconds.",
    )
    add_config_arg(r)
    add_json_arg(r)
    r.add_argument("--wait", type=float, default=WAIT, metavar="S",
                   help=f"watch the attempt this long (default {WAIT:g}; 0: do not wait)")
    r.set_defaults(func=reconnect)
    p.set_defaults(func=_usage)


def _usage(args: argparse.Namespace) -> int:
    raise CliExit(EXIT_USAGE, "usage: edge-agent uplink reconnect [--wait S] [--config PATH] [--json]")


def reconnect(args: argparse.Namespace) -> int:
    from agent.cli.control_client import ask, target
    from agent.fmt import words
    from agent.model import parse_ts

    t = target(args)
    asked = ask(t, "uplink.reconnect")
    up: dict[str, Any] = {}
    if asked["reconnecting"]:
        deadline = time.monotonic() + max(0.0, args.wait)
        start = time.time()
        while True:
            up = ask(t, "status")["uplink"]
            retried = up["state"] == "backoff" and up.get("backoff_until") and parse_ts(up["backoff_until"]) > start
            if up["state"] == "connected" or retried or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    else:
        up = ask(t, "status")["uplink"]
    ok = up["state"] == "connected"
    if args.json:
        print_json({**asked, "state": up["state"], "last_error": up.get("last_error"),
                    "backoff_until": up.get("backoff_until")})
    elif not asked["reconnecting"]:
        print(f"uplink already connected to {asked['broker']}; nothing to do")
    elif ok:
        print(f"uplink connected to {asked['broker']} (was {asked['was']})")
    else:
        err = words(up.get("last_error") or "") or "no answer yet"
        nxt = f"; next attempt at {up['backoff_until'][11:19]}Z" if up.get("backoff_until") else ""
        print(f"uplink to {asked['broker']} still {up['state']}: {err}{nxt}\n"
              "  check with `edge-agent doctor`; readings stay in the buffer meanwhile")
    return EXIT_OK if ok else EXIT_BUFFERING
