"""The published schemas: in sync with the models, and describing what the code really emits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from agent import contract
from agent.buffer import Outbox
from agent.model import Reading, encode_reading

SCHEMAS = {name.split(".")[0]: json.loads((contract.SCHEMA_DIR / name).read_text())
           for name in contract.schemas()}


def test_checked_in_schema_files_match_the_models() -> None:
    assert contract.drift() == [], "run: python -m agent.contract --write"


def test_drift_is_detected_and_write_regenerates(tmp_path: Path) -> None:
    contract.write(tmp_path)
    assert contract.drift(tmp_path) == []
    (tmp_path / "events.schema.json").write_text("{}")
    assert contract.drift(tmp_path) == ["events.schema.json"]
    r = subprocess.run([sys.executable, "-m", "agent.contract", "--check", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "events.schema.json" in r.stderr
    r = subprocess.run([sys.executable, "-m", "agent.contract", "--write", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and contract.drift(tmp_path) == []


def test_schema_files_are_valid_json_schema() -> None:
    for doc in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(doc)


def both(kind: str, payload: str | bytes) -> None:
    jsonschema.validate(json.loads(payload), SCHEMAS[kind])
    contract.validate(kind, payload)


def test_encoded_readings_validate() -> None:
    r = Reading(device="a101-co2", driver="senseair_s8", values={"co2": 612, "ok": True, "fw": "1.2",
                                                                "t": 21.5, "nan": float("nan")},
                ts=1_790_000_000.123, clock="unsynced", tags={"room": "A101"})
    raw = encode_reading(7, r)
    both("reading", raw)
    both("telemetry", '{"v":1,"gateway":"gw-parken-01","epoch":"0123456789abcdef","readings":[%s]}' % raw)


def test_outbox_events_validate(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "b.db", max_bytes=1000, max_age=60).open()
    ob.commit([Reading(device="d1", driver="sim", values={"x": i}, ts=1e9) for i in range(30)], now=1e9)
    ob.add_event("device", {"device": "d1", "driver": "sim", "state": "offline", "link": "disconnected",
                            "detail": "port vanished"})
    ob.expire(now=1e9 + 120)
    evs = [p for _, p in ob.fetch_events(100)]
    assert {json.loads(p)["type"] for p in evs} == {"gap", "device"}
    for p in evs:
        both("events", p)


@pytest.mark.parametrize(("kind", "payload"), [
    ("telemetry", {"v": 1, "gateway": "gw", "epoch": "0123456789abcdef", "readings": [
        {"seq": 0, "device": "d", "driver": "x", "ts": "2026-01-01T00:00:00.000Z", "clock": "synced",
         "values": {}, "tags": {}}]}),
    ("telemetry", {"v": 1, "gateway": "gw", "epoch": "0123456789abcdef", "readings": [
        {"seq": 1, "device": "d", "driver": "x", "ts": "2026-01-01T00:00:00+02:00", "clock": "synced",
         "values": {}, "tags": {}}]}),
    ("telemetry", {"v": 1, "gateway": "gw", "epoch": "0123456789abcdef", "extra": 1, "readings": [
        {"seq": 1, "device": "d", "driver": "x", "ts": "2026-01-01T00:00:00Z", "clock": "synced",
         "values": {}, "tags": {}}]}),
    ("status", {"v": 1, "state": "maybe", "gateway": "gw", "ts": "2026-01-01T00:00:00Z"}),
    ("events", {"v": 1, "type": "gap", "epoch": "0123456789abcdef", "from_seq": 1, "to_seq": 2,
                "count": 0, "reason": "buffer_full", "ts": "2026-01-01T00:00:00Z"}),
    ("events", {"v": 1, "type": "gap", "epoch": "0123456789abcdef", "from_seq": 1, "to_seq": 2,
                "count": 1, "reason": "rejected", "ts": "2026-01-01T00:00:00Z"}),
    ("events", {"v": 2, "type": "device", "device": "d", "driver": "x", "state": "online",
                "link": "connected", "detail": "", "ts": "2026-01-01T00:00:00Z"}),
])
def test_schema_and_model_agree_on_rejections(kind: str, payload: dict) -> None:
    text = json.dumps(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, SCHEMAS[kind])
    with pytest.raises(contract.ContractError):
        contract.validate(kind, text)


def test_the_agent_hot_path_does_not_load_the_contract_models() -> None:
    code = ("import sys, agent.runtime, agent.uplink, agent.buffer, agent.health, agent.pipeline; "
            "print('agent.contract' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "False", r.stderr
