"""`edge-agent config check|schema|show`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from agent.cli.common import EXIT_USAGE, CliExit, add_config_arg, add_json_arg, load, print_json

if TYPE_CHECKING:
    from agent.config import AgentConfig

SERIAL_KEYS = ("port", "baud", "parity", "stopbits", "bytesize")


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
    cfg = load(args)  # invalid: exit 78, the problems also as JSON on stdout under --json
    if args.json:
        print_json({"ok": True, "path": str(cfg.source_path), "devices": len(cfg.devices)})
    else:
        print(f"{cfg.source_path}: OK (gateway {cfg.gateway.id}, {len(cfg.devices)} devices, "
              f"uplink {cfg.uplink.host}:{cfg.uplink.port}, prefix {cfg.topic_prefix})")
    return 0


def schema(args: argparse.Namespace) -> int:
    from agent.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def show(args: argparse.Namespace) -> int:
    from agent.config import masked_dump

    if args.path:
        args.config = args.path
    cfg = load(args)
    data = masked_dump(cfg)
    data["uplink"]["topic_prefix"] = cfg.topic_prefix
    data["devices"] = [_device_keys(cfg, i, d) for i, d in enumerate(data.get("devices", []))]
    if args.json:
        print_json(data)
    else:
        _toml(_as_written(cfg, data))
    return 0


def _device_keys(cfg: AgentConfig, i: int, d: dict[str, Any]) -> dict[str, Any]:
    """A device without the serial keys' defaults when it has no serial line (`sim`, BLE, `transport = "ble"`)."""
    from drivers import driver_class

    try:
        transport = driver_class(cfg.devices[i].driver).device_transport(cfg.devices[i])
    except (ImportError, KeyError):
        return d
    if transport == "serial":
        return d
    defaults = {"port": None, "baud": None, "parity": "N", "stopbits": 1, "bytesize": 8}
    return {k: v for k, v in d.items() if not (k in SERIAL_KEYS and v == defaults[k])}


def _human_kinds() -> dict[tuple[str, str], str]:
    """(section, key) -> "size" or "duration", from the config models' validators."""
    import typing

    from agent.config import AgentConfig, DeviceConfig
    from agent.units import parse_duration, parse_size

    kinds: dict[tuple[str, str], str] = {}

    def scan(section: str, model: Any) -> None:
        for key, f in model.model_fields.items():
            inner = [m for a in typing.get_args(f.annotation) for m in getattr(a, "__metadata__", ())]
            for m in [*f.metadata, *inner]:  # `Duration | None` keeps its validator inside
                func = getattr(m, "func", None)
                if func is parse_size:
                    kinds[(section, key)] = "size"
                elif func is parse_duration:
                    kinds[(section, key)] = "duration"

    for name, f in AgentConfig.model_fields.items():
        if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields"):
            scan(name, f.annotation)
    scan("devices", DeviceConfig)
    return kinds


def human_duration(v: float) -> str:
    """1209600.0 -> "14d", 0.5 -> "500ms", 90.0 -> "90s" (what parse_duration reads back)."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if v >= n and v % n == 0:
            return f"{int(v // n)}{unit}"
    if v == int(v):
        return f"{int(v)}s"
    ms = v * 1000
    return f"{round(ms)}ms" if abs(ms - round(ms)) < 1e-6 else f"{v:g}s"


def human_size(v: int) -> str:
    """256000000 -> "256MB", 1024 -> "1KiB"... whichever is exact; else bytes."""
    for unit, n in (("GB", 10**9), ("MB", 10**6), ("GiB", 2**30), ("MiB", 2**20), ("KB", 1000), ("KiB", 1024)):
        if v >= n and v % n == 0:
            return f"{v // n}{unit}"
    return str(v)


def _parses_to(kind: str, text: str, v: Any) -> bool:
    from agent.units import parse_duration, parse_size

    try:
        return bool((parse_size(text) if kind == "size" else parse_duration(text)) == v)
    except (TypeError, ValueError):
        return False


def _as_written(cfg: AgentConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Sizes and durations as the file wrote them ("14d"), defaults in the same human form."""
    import tomllib

    raw: dict[str, Any] = {}
    if cfg.source_path is not None:
        try:
            raw = tomllib.loads(cfg.source_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            raw = {}
    kinds = _human_kinds()

    def form(section: str, key: str, v: Any, given: Any) -> Any:
        kind = kinds.get((section, key))
        if kind is None or v is None or isinstance(v, bool):
            return v
        if isinstance(given, str) and _parses_to(kind, given, v):  # an alias may have set another value
            return given.strip()
        return human_size(int(v)) if kind == "size" else human_duration(float(v))

    out: dict[str, Any] = {}
    for section, body in data.items():
        if section == "devices":
            rows: list[Any] = raw["devices"] if isinstance(raw.get("devices"), list) else []
            out[section] = [
                {k: form("devices", k, v, (rows[i] if i < len(rows) and isinstance(rows[i], dict) else {}).get(k))
                 for k, v in d.items()}
                for i, d in enumerate(body)
            ]
        elif isinstance(body, dict):
            given: dict[str, Any] = raw[section] if isinstance(raw.get(section), dict) else {}
            out[section] = {k: form(section, k, v, given.get(k)) for k, v in body.items()}
        else:
            out[section] = body
    return out


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
