"""The MQTT contract as pydantic models: the source of docs/schema/*.schema.json.

The agent's hot path never imports this module: payloads are built by hand (agent/model.py,
agent/uplink.py, agent/buffer.py). These models exist to generate the published JSON Schema
files and to validate messages (the reference receiver, tests).

    python -m agent.contract --write   # regenerate docs/schema/*.schema.json
    python -m agent.contract --check   # exit 1 when the checked-in files drifted
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.errors import EdgeAgentError

VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schema"

GatewayId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="gateway.id")]
DeviceId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="devices[].id")]
Epoch = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$",
                             description="random id of the buffer database (64 bits, hex)")]
Seq = Annotated[int, Field(ge=1, description="per-epoch sequence number of an accepted reading")]
Timestamp = Annotated[str, Field(
    pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$",
    description="RFC 3339, UTC, 'Z' suffix (the agent writes milliseconds)",
)]
ClockState = Literal["synced", "unsynced"]
Version = Annotated[int, Field(ge=1, le=1, json_schema_extra={"const": 1},
                                 description="message format version (docs/PROTOCOL.md#versioning)")]
Value = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Open(BaseModel):
    """Diagnostic payloads: fields may be added without a version bump."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


# -- P/telemetry ------------------------------------------------------------------------------
class ReadingMsg(_Strict):
    """One accepted reading `R`; byte-identical on every redelivery."""

    model_config = ConfigDict(title="Reading", extra="forbid", strict=True, frozen=True)
    seq: Seq
    device: DeviceId
    driver: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")]
    ts: Timestamp
    clock: ClockState
    values: dict[Annotated[str, Field(min_length=1, max_length=64)], Value] = Field(
        description="quantity -> value in canonical units (docs/PROTOCOL.md#units)")
    tags: dict[str, str]


class Telemetry(_Strict):
    """`P/telemetry`: a batch of readings of one epoch, in seq order."""

    model_config = ConfigDict(title="Telemetry", extra="forbid", strict=True, frozen=True)
    v: Version
    gateway: GatewayId
    epoch: Epoch
    readings: list[ReadingMsg] = Field(min_length=1)


# -- P/status -----------------------------------------------------------------------------------
class StatusOnline(_Strict):
    """Birth: published retained on every (re)connect."""

    v: Version
    state: Literal["online"]
    gateway: GatewayId
    ts: Timestamp
    version: str = Field(description="agent version")
    config_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{12}$")]
    epoch: Epoch


class StatusOffline(_Strict):
    """Last will (broker-published, `reason: lost`) or clean shutdown (`reason: shutdown`)."""

    v: Version
    state: Literal["offline"]
    gateway: GatewayId
    ts: Timestamp = Field(description="will: when the session began; shutdown: when it ended")
    reason: Literal["lost", "shutdown"] | None = None


Status = Annotated[StatusOnline | StatusOffline, Field(discriminator="state")]


# -- P/events -----------------------------------------------------------------------------------
class GapEvent(_Strict):
    """Accepted readings that will never be delivered; idempotent on (gateway, epoch, from_seq)."""

    v: Version
    type: Literal["gap"]
    epoch: Epoch
    from_seq: Seq
    to_seq: Seq
    count: Annotated[int, Field(ge=1, description="exact number of lost seqs in [from_seq, to_seq]")]
    reason: Literal["buffer_full", "max_age", "corrupt_database"]
    ts: Timestamp


class DeviceEvent(_Strict):
    """A device's liveness changed."""

    v: Version
    type: Literal["device"]
    device: DeviceId
    driver: str
    state: Literal["online", "offline"]
    link: Literal["starting", "connected", "disconnected", "failed"]
    detail: Annotated[str, Field(max_length=200)]
    ts: Timestamp


class BufferQuarantinedEvent(_Strict):
    """The buffer database was corrupt, renamed aside, and a new epoch began."""

    v: Version
    type: Literal["buffer_quarantined"]
    reason: Literal["corrupt_database"]
    detail: Annotated[str, Field(max_length=200)]
    quarantined_as: str
    epoch: Epoch = Field(description="the new epoch")
    old_epoch: Epoch | None = Field(description="null: the old file's epoch could not be read")
    lost: Annotated[int, Field(ge=0)] | None = Field(
        description="undelivered readings of old_epoch (reported as a gap); null: unknown")
    ts: Timestamp


CommandStatus = Literal["ok", "refused", "failed", "rolled_back"]
Jti = Annotated[str, Field(min_length=1, max_length=128, description="the command's jti claim")]
Verb = Annotated[str, Field(max_length=64, description="the command's cmd claim")]
Kid = Annotated[str, Field(max_length=64, description="the trusted key that signed it (JWS header kid)")]
Reason = Annotated[str, Field(max_length=64, description=(
    "machine-readable cause (docs/PROTOCOL.md#refusals); null when ok"))]


class CommandEvent(_Strict):
    """A command on P/commands and its outcome (the same as its P/commands/result)."""

    v: Version
    type: Literal["command"]
    jti: Jti | None = Field(description="null: the message was refused before a jti could be read")
    cmd: Verb | None
    kid: Kid | None
    status: CommandStatus
    reason: Reason | None
    detail: Annotated[str, Field(max_length=200)]
    ts: Timestamp


Event = Annotated[GapEvent | DeviceEvent | BufferQuarantinedEvent | CommandEvent, Field(discriminator="type")]


# -- P/commands/result ----------------------------------------------------------------------------
class CommandResult(_Strict):
    """`P/commands/result` (QoS 1): the answer to every message on P/commands."""

    model_config = ConfigDict(title="CommandResult", extra="forbid", strict=True, frozen=True)
    v: Version
    gateway: GatewayId
    jti: Jti | None = Field(description="null: refused before a jti could be read (malformed, bad signature ...)")
    cmd: Verb | None
    kid: Kid | None
    status: CommandStatus
    reason: Reason | None
    detail: Annotated[str, Field(max_length=500, description="for humans")]
    result: Any = Field(description="the verb's answer (docs/PROTOCOL.md#verbs); for some refusals details")
    ts: Timestamp


# -- P/health -----------------------------------------------------------------------------------
class HealthBuffer(_Open):
    epoch: Epoch
    depth: int = Field(ge=0, description="readings waiting")
    bytes: int = Field(ge=0)
    max_bytes: int = Field(ge=0)
    oldest_age: float | None = Field(description="seconds; null when empty")
    time_to_full: float | None = Field(description="seconds at the current accept rate; null: not filling")
    next_seq: Seq
    dropped: dict[Literal["buffer_full", "max_age", "corrupt_database"], int]
    dropped_total: int = Field(ge=0, description="accepted readings dropped (sum of gap counts)")
    rejected: int = Field(ge=0, description="refused by on_full=reject_new (never accepted)")
    queue_overflow: int = Field(ge=0, description="refused by the full in-memory queue")
    queued: int = Field(ge=0)
    file_bytes: int = Field(ge=0)
    accept_rate: float = Field(ge=0, description="readings/s over the last minutes")
    events_pending: int = Field(ge=0)
    writer: Literal["ok", "disk_full", "locked", "read_only", "io_error", "corrupt"] = Field(
        default="ok", description="not ok: the disk refuses commits for now (full, locked by another process, "
        "read-only filesystem, I/O errors, damaged file); readings wait in memory (queued), stored ones are "
        "still delivered")
    writer_detail: str = Field(default="", description="the last refusal's SQLite error, when writer is not ok")


class HealthUplink(_Open):
    state: Literal["starting", "connecting", "connected", "backoff"]
    connected_since: Timestamp | None
    last_error: str
    published: int = Field(ge=0, description="telemetry messages published")
    acked: int = Field(ge=0, description="telemetry messages acknowledged (PUBACK)")
    readings_published: int = Field(ge=0)
    readings_acked: int = Field(ge=0)
    events_published: int = Field(ge=0)
    reconnects: int = Field(ge=0)
    last_puback: Timestamp | None
    inflight: int = Field(ge=0)
    backoff_until: Timestamp | None


class HealthDevice(_Open):
    driver: str
    online: bool
    link: Literal["starting", "connected", "disconnected", "failed"]
    last_seen: Timestamp | None
    readings: int = Field(ge=0)
    errors: int = Field(ge=0)
    restarts: int = Field(ge=0)


class HealthProcess(_Open):
    cpu_percent: float = Field(ge=0)
    rss_bytes: int = Field(ge=0)
    max_rss_bytes: int = Field(ge=0)
    pid: int


class HealthDisk(_Open):
    free: int | None
    total: int | None


class HealthVersions(_Open):
    agent: str
    python: str
    aiomqtt: str | None
    paho_mqtt: str | None
    bleak: str | None
    pydantic: str | None
    sqlite: str


class Health(_Open):
    """`P/health` every health_interval (QoS 0, not retained)."""

    model_config = ConfigDict(title="Health", extra="allow", strict=True, frozen=True)
    v: Version
    gateway: GatewayId
    ts: Timestamp
    version: str
    uptime: float = Field(ge=0)
    clock: ClockState
    buffer: HealthBuffer
    uplink: HealthUplink
    devices: dict[DeviceId, HealthDevice]
    process: HealthProcess
    disk_free: int | None
    disk: HealthDisk
    versions: HealthVersions


# -- validation -------------------------------------------------------------------------------
TOPICS = ("telemetry", "status", "health", "events", "commands/result")

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "telemetry": TypeAdapter(Telemetry),
    "status": TypeAdapter(Status),
    "health": TypeAdapter(Health),
    "events": TypeAdapter(Event),
    "reading": TypeAdapter(ReadingMsg),  # one element of telemetry `readings`
    "commands/result": TypeAdapter(CommandResult),
}


class ContractError(EdgeAgentError):
    """A message does not match the published contract."""


def validate(kind: str, payload: bytes | str) -> Any:
    """Validate one message of `kind` (a topic's last level, or "reading"); the model, or ContractError."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        raise ContractError(f"unknown topic {kind!r}")
    try:
        return adapter.validate_json(payload)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ContractError(f"{kind}: {loc or '(message)'}: {first['msg']} ({e.error_count()} error(s))") from None


# -- schema files -----------------------------------------------------------------------------
def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, for every topic (plus the reading `R`)."""
    titles = {
        "telemetry": "edge-agent P/telemetry (QoS 1)",
        "status": "edge-agent P/status (retained birth / last will)",
        "health": "edge-agent P/health (QoS 0)",
        "events": "edge-agent P/events (QoS 1): gap, device, buffer_quarantined, command",
        "reading": "edge-agent reading R (an element of P/telemetry readings)",
        "commands/result": "edge-agent P/commands/result (QoS 1): the answer to a signed command",
    }
    out: dict[str, dict[str, Any]] = {}
    for name, adapter in _ADAPTERS.items():
        body = adapter.json_schema(mode="validation")
        doc = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": titles[name],
            "description": f"Message format version {VERSION}; see docs/PROTOCOL.md.",
            **{k: v for k, v in body.items() if k not in ("title", "description")},
        }
        out[f"{name.replace('commands/result', 'command_result')}.schema.json"] = doc
    return out


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    bad = []
    for name, doc in schemas().items():
        p = directory / name
        if not p.exists() or p.read_text(encoding="utf-8") != render(doc):
            bad.append(name)
    return bad


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, doc in schemas().items():
        (directory / name).write_text(render(doc), encoding="utf-8")
    return sorted(schemas())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.contract", description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="regenerate the schema files")
    p.add_argument("--check", action="store_true", help="exit 1 when the schema files drifted")
    p.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = p.parse_args(argv)
    if args.write:
        for name in write(args.dir):
            print(args.dir / name)
        return 0
    bad = drift(args.dir)
    if bad:
        print(f"schema files out of date: {', '.join(bad)} (run: python -m agent.contract --write)",
              file=sys.stderr)
        return 1
    print("schema files up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
