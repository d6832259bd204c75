"""`edge-agent config check|schema|show`."""

from __future__ import annotations

import argparse
import json

from agent.cli.common import EXIT_USAGE, CliExit, add_config_arg, add_json_arg, load, print_json
from agent.config import json_schema, masked_dump


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="check, show or describe the configuration")
    add_config_arg(p)
    csub = p.add_subparsers(dest="config_verb", metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file (exit 78 listing every problem)")
    c.add_argument("path", nargs="?", help="file to check (default: --config or the default path)")
    add_config_arg(c)
    add_json_arg(c)
    c.set_defaults(func=check)
    s = csub.add_parser("schema", help="print the JSON Schema of the config file")
    add_config_arg(s)
    s.add_argument("--json", action="store_true", help="accepted for symmetry: the schema is always JSON")
    s.set_defaults(func=schema)
    sh = csub.add_parser("show", help="print the effective config (defaults filled, secrets masked)")
    sh.add_argument("path", nargs="?", help="file to show (default: --config or the default path)")
    add_config_arg(sh)
    add_json_arg(sh)
    sh.set_defaults(func=show)
    p.set_defaults(func=_usage)


def _usage(args: argparse.Namespace) -> int:
    raise CliExit(EXIT_USAGE, "usage: edge-agent config {check,schema,show} [--config PATH]")


def check(args: argparse.Namespace) -> int:
    if args.path:
        args.config = args.path
    cfg = load(args)
    if args.json:
        print_json({"ok": True, "path": str(cfg.source_path), "devices": len(cfg.devices)})
    else:
        print(f"{cfg.source_path}: OK (gateway {cfg.gateway.id}, {len(cfg.devices)} devices, "
              f"uplink {cfg.uplink.host}:{cfg.uplink.port}, prefix {cfg.topic_prefix})")
    return 0


def schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def show(args: argparse.Namespace) -> int:
    if args.path:
        args.config = args.path
    cfg = load(args)
    data = masked_dump(cfg)
    data["uplink"]["topic_prefix"] = cfg.topic_prefix
    if args.json:
        print_json(data)
    else:
        _toml(data)
    return 0


def _toml(data: dict[str, object]) -> None:
    def val(v: object) -> str:
        return json.dumps(v, ensure_ascii=False) if not isinstance(v, dict) else "{ " + ", ".join(
            f"{k} = {val(x)}" for k, x in v.items()) + " }"

    devices = data.pop("devices", [])
    for k, v in list(data.items()):
        if not isinstance(v, dict):
            if v is not None:
                print(f"{k} = {val(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            print(f"\n[{k}]")
            for kk, vv in v.items():
                if vv is not None:
                    print(f"{kk} = {val(vv) if (k, kk) != ('control', 'mode') else oct(int(vv))}")  # 0o660
    for d in devices:  # type: ignore[attr-defined]
        print("\n[[devices]]")
        for kk, vv in d.items():
            if vv is not None:
                print(f"{kk} = {val(vv)}")
