"""Configuration: TOML file -> validated, immutable pydantic models.

Every problem is reported at once, each naming its key (``devices[0].driver: ...``)
and, where it can be found, the line in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from agent.paths import default_config_path
from drivers.devices import BLE_KEYS as _BLE
from drivers.devices import SERIAL_KEYS as _SERIAL
from edge_common.device import DEVICE_ID, DeviceConfig, Duration, Size, error_key
from edge_common.errors import ConfigError

_loc = error_key  # the old name (drivers and tests of other branches import it)

__all__ = ["DEVICE_ID", "DeviceConfig", "Duration", "Size"]


GATEWAY_ID = r"^[a-z0-9][a-z0-9-]{0,63}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayConfig(_Section):
    id: str
    health_interval: Duration = Field(default=60.0, gt=0)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(GATEWAY_ID, v):
            raise ValueError(f"{v!r} is not a gateway id: 1-64 of a-z 0-9 '-', starting with a letter or digit")
        return v


class BufferConfig(_Section):
    path: Path = Path("buffer.db")
    max_bytes: Size = Field(default=256 * 1000 * 1000, ge=1024)  # a handful of readings at least
    max_age: Duration = Field(default=14 * 86400.0, ge=60)
    on_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    # Readings wait in memory at most this long before one batched commit (power-loss window).
    commit_interval: Duration = Field(default=0.5, le=60)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # NORMAL only: the WAL is synced at most this often; nothing is published before its sync.
    sync_interval: Duration = Field(default=2.0, gt=0, le=60)
    queue_size: int = Field(default=100_000, ge=100)
    # Keep this much free on the filesystem (the OS and logs need it too); the buffer
    # drops or rejects per on_full instead of filling the card.
    min_free_disk: Size = 8_000_000
    # SQLite page size of a NEW buffer file (an existing file keeps its own). 1024 writes less
    # per commit on SD cards (BENCHMARKS.md, SD-card wear) at some cost in drain speed.
    page_size: Literal[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] = 4096


class TlsConfig(_Section):
    ca_file: Path | None = None  # None: the system trust store
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class UplinkConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str | None = None  # default edge/<gateway.id>
    qos: Literal[1] = 1
    client_id: str | None = None  # default edge-agent-<gateway.id>
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    batch_max_readings: int = Field(default=500, ge=1, le=10_000)
    batch_max_bytes: int = Field(default=128 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_inflight: int = Field(default=16, ge=1, le=1000)
    backoff_initial: Duration = 0.5
    backoff_max: Duration = 60.0
    health_interval: Duration | None = Field(default=None, gt=0, exclude=True)  # alias of gateway.health_interval

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v or v.endswith("/") or any(c in v for c in "#+\0")):
            raise ValueError("must be non-empty, without '#', '+' or a trailing '/'")
        return v

    @model_validator(mode="after")
    def _creds(self) -> UplinkConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        return self


class ControlConfig(_Section):
    socket: Path = Path("/run/edge-agent/control.sock")
    group: str | None = None
    mode: int = 0o660


class BleConfig(_Section):
    """The shared BLE scanner (drivers/ble/scanner.py)."""

    adapter: str | None = Field(default=None, pattern=r"^hci[0-9]{1,2}$")  # None: first powered adapter
    scanning_mode: Literal["auto", "active", "passive"] = "auto"  # auto: passive if BlueZ allows it
    restart_delay: Duration = Field(default=2.0, le=300)
    bluez_timeout: Duration = Field(default=60.0, ge=1)


class CommandsConfig(_Section):
    """Signed remote commands on P/commands (agent/commands.py); the section absent: off."""

    trusted_keys: list[Path] = Field(min_length=1)  # Ed25519 public keys (PEM); kid = file name sans extension
    allow: list[str] | None = None  # None: every verb
    max_lifetime: Duration = Field(default=3600.0, gt=0)  # longest exp - iat accepted
    confirm_timeout: Duration = Field(default=120.0, ge=1, le=3600)  # config.apply: connect + PUBACK by then
    keep_versions: int = Field(default=5, ge=1, le=100)  # previous config files kept by config.apply


def _by_driver(raw: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> DeviceConfig:
    """One `[[devices]]` table, validated by the model of its `driver`: a union on `driver` over the registry.

    The value kept is the plain DeviceConfig (driver keys as extras) that drivers read.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("driver"), str):
        plain: DeviceConfig = handler(raw)  # not a table, or no driver: DeviceConfig's own errors
        return plain
    from drivers.devices import line_error
    from drivers.registry import registry

    reg, name = registry(), raw["driver"]
    why = None
    if name not in reg.drivers:
        why = reg.why_missing(name)
        if why is None:
            why = f"unknown driver {name!r} (known: {', '.join(sorted(reg.names()))})"
            if reg.problems:  # perhaps one of these was meant to provide it
                why += "; " + "; ".join(reg.problems.values())
        else:
            why = f"driver {name!r} is not available: {why}"
    else:
        try:
            cls = reg.family_of(name).driver_class(name)
            # one model per driver for this validation (parse_config passes a cache in the context)
            model = cls.device_model(info.context.get(_MODELS) if isinstance(info.context, dict) else None)
        except ImportError as e:
            why = f"driver {name!r} cannot be loaded: {e}"
        except TypeError as e:  # a plugin's Options clash with the device keys
            r = reg.drivers[name]
            why = f"driver {name!r} of {r.plugin!r} ({r.dist}) cannot be used: {e}"
    if why is not None:  # the common keys are still checked
        errors = [line_error("unknown_driver", why, ("driver",), name)]
        try:
            handler(raw)
        except ValidationError as e:
            errors += [line_error(err["type"], err["msg"], err["loc"], err.get("input"))
                       for err in e.errors() if err["loc"] != ("driver",)]
        raise ValidationError.from_exception_data("DeviceConfig", errors)
    model.model_validate(raw)
    device: DeviceConfig = handler(raw)
    problems = cls.check_device(device)
    if problems:
        raise ValidationError.from_exception_data("DeviceConfig", [
            line_error("device_key", msg, tuple(key.split(".")) if key else (), None) for key, msg in problems])
    return device


_MODELS = "device_models"
Device = Annotated[DeviceConfig, WrapValidator(_by_driver)]


class AgentConfig(_Section):
    gateway: GatewayConfig
    buffer: BufferConfig = BufferConfig()
    uplink: UplinkConfig = UplinkConfig()
    control: ControlConfig = ControlConfig()
    ble: BleConfig = BleConfig()
    commands: CommandsConfig | None = None
    devices: list[Device] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    health_interval: Duration | None = Field(default=None, gt=0, exclude=True)  # alias of gateway.health_interval
    source_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _fold_health_interval(self) -> AgentConfig:
        """An alias sets gateway.health_interval, the one key the effective config (`config show`) has."""
        alias = self.uplink.health_interval or self.health_interval
        if alias is not None and alias != self.gateway.health_interval:
            object.__setattr__(self, "gateway", self.gateway.model_copy(update={"health_interval": alias}))
        return self

    @property
    def topic_prefix(self) -> str:
        return self.uplink.topic_prefix or f"edge/{self.gateway.id}"

    @property
    def health_every(self) -> float:
        """Period of P/health: gateway.health_interval (60 s), or what an alias of it set."""
        return self.gateway.health_interval

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or f"edge-agent-{self.gateway.id}"

    def digest(self) -> str:
        """Short stable digest of the effective config (for birth messages)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def device(self, device_id: str) -> DeviceConfig:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


def _line_of(text: str, key: str) -> int | None:
    """Best-effort line number for a dotted key (tomllib keeps no positions)."""
    parts = re.split(r"\.|\[(\d+)\]", key)
    parts = [p for p in parts if p]
    lines = text.splitlines()
    section_line = 0
    idx = 0
    if parts and parts[0] == "devices":
        n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        seen = -1
        for i, line in enumerate(lines):
            if re.match(r"^\s*\[\[\s*devices\s*\]\]", line):
                seen += 1
                if seen == n:
                    section_line = i
                    break
        else:
            return None
        idx = section_line
        leaf = parts[2] if len(parts) > 2 else None
    else:
        if len(parts) >= 2:
            for i, line in enumerate(lines):
                if re.match(rf"^\s*\[\s*{re.escape(parts[0])}\s*\]", line):
                    idx = i
                    break
            leaf = parts[1]
        else:
            leaf = parts[0] if parts else None
    if leaf is None:
        return idx + 1
    for i in range(idx, len(lines)):
        if i > idx and re.match(r"^\s*\[", lines[i]):
            break
        if re.match(rf"^\s*{re.escape(leaf)}\s*=", lines[i]):
            return i + 1
    return idx + 1 if idx else None


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p)


def parse_config(
    data: dict[str, Any], *, source: Path | None = None, text: str = "", check_files: bool = True
) -> AgentConfig:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []

    def add(key: str, msg: str) -> None:
        line = _line_of(text, key) if text else None
        problems.append(f"{key}: {msg}" + (f" (line {line})" if line else ""))

    if source is not None:
        data = _resolve_driver_paths(data, source.resolve().parent)
    cfg: AgentConfig | None = None
    try:
        cfg = AgentConfig.model_validate(data, context={_MODELS: {}})
    except ValidationError as e:
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and not msg.startswith("unknown key"):  # (devices say it already)
                msg = "unknown key"
            add(_loc(err["loc"]), msg)
    _duplicate_ids(data.get("devices"), add)
    if problems or cfg is None:
        raise ConfigError(problems, str(source) if source else None)

    if source is not None:
        base = source.resolve().parent
        buf = cfg.buffer.model_copy(update={"path": _resolve(base, cfg.buffer.path)})
        up_upd: dict[str, Any] = {"password_file": _resolve(base, cfg.uplink.password_file)}
        if cfg.uplink.tls is not None:
            t = cfg.uplink.tls
            up_upd["tls"] = t.model_copy(
                update={k: _resolve(base, getattr(t, k)) for k in ("ca_file", "cert_file", "key_file")}
            )
        ctl = cfg.control.model_copy(update={"socket": _resolve(base, cfg.control.socket)})
        devs = [d.model_copy(update={"replay": _resolve(base, d.replay)}) if d.replay else d for d in cfg.devices]
        cmds = cfg.commands and cfg.commands.model_copy(
            update={"trusted_keys": [_resolve(base, k) for k in cfg.commands.trusted_keys]})
        cfg = cfg.model_copy(
            update={
                "buffer": buf,
                "uplink": cfg.uplink.model_copy(update=up_upd),
                "control": ctl,
                "commands": cmds,
                "devices": devs,
                "source_path": source.resolve(),
            }
        )
    from agent.auth import check_uplink_files

    for key, msg in check_uplink_files(cfg) if check_files else ():  # files exist; password file private
        add(key, msg)
    for i, d in enumerate(cfg.devices):
        if check_files and d.replay is not None and not d.replay.is_file():
            add(f"devices[{i}].replay", f"capture not found: {d.replay}")
    if cfg.commands is not None:  # agent.commands stays out of an agent without the section
        from agent.commands import check_commands

        for key, msg in check_commands(cfg, check_files=check_files):  # verbs known; keys are Ed25519 PEM
            add(key, msg)
    if problems:
        raise ConfigError(problems, str(source) if source else None)
    return cfg


def _resolve_driver_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """`data` with the relative paths of driver keys (Driver.path_options, e.g. `dbc`) made absolute."""
    from drivers.registry import registry

    reg = registry()
    raw = data.get("devices")
    if not isinstance(raw, list):
        return data
    out: list[Any] = []
    for d in raw:
        if isinstance(d, dict) and d.get("driver") in reg.drivers:
            try:
                keys = reg.family_of(d["driver"]).driver_class(d["driver"]).path_options
            except ImportError:
                keys = ()
            d = {**d, **{k: str(_resolve(base, Path(v))) for k in keys if isinstance(v := d.get(k), str) and v}}
        out.append(d)
    return {**data, "devices": out}


def _duplicate_ids(raw: Any, add: Any) -> None:
    seen: dict[str, int] = {}
    for i, d in enumerate(raw if isinstance(raw, list) else []):
        dev_id = d.get("id") if isinstance(d, dict) else None
        if isinstance(dev_id, str) and re.fullmatch(DEVICE_ID, dev_id):
            if dev_id in seen:
                add(f"devices[{i}].id", f"duplicate device id {dev_id!r} (also devices[{seen[dev_id]}])")
            seen.setdefault(dev_id, i)


def load_config(path: str | os.PathLike[str] | None = None, *, check_files: bool = True) -> AgentConfig:
    """Read and validate a config file; ConfigError on any problem."""
    p = Path(path) if path is not None else default_config_path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found: {p}"], str(p)) from None
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror}"], str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError(["file is not UTF-8 text"], str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], str(p)) from None
    return parse_config(data, source=p, text=text, check_files=check_files)


SECRET_KEYS = frozenset({"password", "key", "bindkey", "secret", "token", "psk"})


def masked_dump(cfg: AgentConfig) -> dict[str, Any]:
    """Effective config as plain data with secrets masked (for `config show`)."""
    data = cfg.model_dump(mode="json", exclude_none=False)

    def secret(k: str, v: Any) -> bool:
        k = k.lower()
        return isinstance(v, str) and not k.endswith("_file") and (k in SECRET_KEYS or k.endswith(("_key", "password")))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: "***" if secret(k, v) else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(data)  # type: ignore[no-any-return]


SERIAL_KEYS = (*_SERIAL, "replay")  # `replay` only for drivers that can (Driver.supports_replay)
BLE_KEYS = _BLE


def device_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each registered driver's device table: its device model (the one `config check` uses)."""
    from drivers.registry import registry

    out: dict[str, dict[str, Any]] = {}
    for name, reg in registry().drivers.items():
        try:
            cls = reg.family.driver_class(name)
            dev = cls.device_model().model_json_schema(ref_template="#/$defs/{model}")
        except (ImportError, TypeError):
            continue  # `config check` names it when a device uses it
        props = dev["properties"]
        props["driver"] = {"const": name, "title": "Driver"}
        # Required beyond the model's own: the port of a serial-only driver (a `replay` stands in for it),
        # the address of a BLE one that listens for one tag.
        rules = cls.schema_rules()
        required = ["id", "driver"] + (["port"] if cls.transports() == ("serial",) and not rules else [])
        required += ["address"] if cls.transports() == ("ble",) and cls.requires_address() else []
        out[name] = {
            "title": f"{name} device",
            "description": reg.family.title + ("" if reg.builtin else f" (plugin {reg.dist})"),
            "type": "object", "properties": props,
            "required": required + [k for k in dev.get("required", []) if k not in required],
            "additionalProperties": False, **rules, "$defs": dev.get("$defs", {}),
        }
    return out


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file; `devices` is a union over the registered drivers, on `driver`."""
    schema = AgentConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edge-agent configuration"
    schema.get("properties", {}).pop("source_path", None)
    defs = schema.setdefault("$defs", {})
    mapping: dict[str, str] = {}
    for name, dev in device_schemas().items():
        defs.update(dev.pop("$defs"))
        key = f"Device_{name}"
        defs[key] = dev
        mapping[name] = f"#/$defs/{key}"
    schema["properties"]["devices"]["items"] = {
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "driver", "mapping": mapping},  # OpenAPI's; editors use it
    }
    defs.pop("DeviceConfig", None)
    return schema
