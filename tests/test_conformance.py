"""Conformance of every registered driver family (built-in and plugin): a family gets these by registering.

Simulator -> decoder gives the declared quantities; fuzzed input never raises; simulator -> pty ->
the real driver gives exactly what the decoder gives (a polling driver asks the family's simulated
device); `probe serial` recognises the simulator; the
config schema has the driver's keys and agrees with `config check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import subprocess
import sys
import time
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import BLE_KEYS, SERIAL_KEYS, json_schema, parse_config
from drivers.base import DeviceContext, StreamProtocol
from drivers.family import SimParams, resolve
from drivers.probe import analyse, recognised
from drivers.registry import registry
from drivers.stream import StreamDriver
from edge_common.device import DeviceConfig
from edge_common.model import Reading
from tests.support.pty import PtyDevice

REG = registry()
DRIVERS = sorted(REG.drivers)
SIMULATED = sorted(REG.simulated())
RECOGNISED = sorted({(fam.name, r.protocol) for fam in REG.families.values() for r in fam.probe})


def _simulate(driver: str, n: int, fmt: str = "json") -> tuple[list[Any], list[list[dict[str, Any]]], Any]:
    """n chunks of the driver's simulator, what a fresh decoder makes of each, and the decoder."""
    chunks, proto = REG.family_of(driver).simulation(driver, SimParams(format=fmt))
    got = list(itertools.islice(chunks, n))
    return got, [proto.feed(c) + proto.flush() for c in got], proto


def _device_options(driver: str) -> dict[str, Any]:
    """Device keys under which the real driver decodes its simulator's bytes (`DriverEntry.sim_device`)."""
    ref = REG.drivers[driver].entry.sim_device
    return dict(resolve(ref)) if ref else {}


@pytest.mark.parametrize("driver", SIMULATED)
def test_simulator_decodes_to_the_declared_quantities(driver: str) -> None:
    _, decoded, proto = _simulate(driver, 30)
    readings = [v for vs in decoded for v in vs]
    assert len(readings) >= 25, decoded  # (a CSV header is a chunk without a reading)
    assert dict(proto.errors) == {}
    declared = set(REG.drivers[driver].entry.quantities)
    for v in readings:
        assert declared <= set(v), (declared - set(v), v)
        for k, x in v.items():
            assert isinstance(k, str) and isinstance(x, float | int | str | bool), (k, x)
            assert not (isinstance(x, float) and not math.isfinite(x)), (k, x)


def _stream(driver: str) -> bool:
    _, _, proto = _simulate(driver, 1)
    return isinstance(proto, StreamProtocol)


STREAMS = [d for d in SIMULATED if _stream(d)]
ADVERTS = [d for d in SIMULATED if REG.family_of(d).advert_decoder]


@pytest.mark.parametrize("driver", STREAMS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bytes_never_raise(driver: str, data: st.DataObject) -> None:
    """Random bytes, and the simulator's bytes cut, spliced and bit-flipped: counted, never raised."""
    chunks, _, _ = _simulate(driver, 6)
    real = b"".join(chunks)
    blob = data.draw(st.one_of(
        st.binary(max_size=400),
        st.builds(lambda cut, junk: real[:cut] + junk + real[cut:], st.integers(0, len(real)), st.binary(max_size=40)),
        st.builds(lambda i, bit: real[:i] + bytes([real[i] ^ (1 << bit)]) + real[i + 1:],
                  st.integers(0, len(real) - 1), st.integers(0, 7)),
    ))
    _, _, proto = _simulate(driver, 0)
    split = data.draw(st.integers(0, len(blob)))
    out = proto.feed(blob[:split]) + proto.feed(blob[split:]) + proto.flush()
    assert all(isinstance(v, dict) for v in out)


@pytest.mark.parametrize("driver", ADVERTS)
@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40), pick=st.integers(0, 7), rssi=st.integers(-100, 0))
def test_fuzzed_adverts_never_raise(driver: str, payload: bytes, pick: int, rssi: int) -> None:
    """Garbage behind each of the family's own scanner patterns reaches the decoder: DecodeError or values."""
    from drivers.ble.decoders import Advert, uuid16

    start, ad_type, content = REG.family_of(driver).ble_patterns[pick % len(REG.family_of(driver).ble_patterns)]
    short = int.from_bytes(content, "little")
    adv = Advert("C7:F5:2A:A1:B2:C3", None, rssi,
                 {short: payload} if ad_type == 0xFF else {},
                 {uuid16(short): payload} if ad_type == 0x16 else {})
    _, _, proto = _simulate(driver, 0)
    proto.feed(adv)  # AdvertDecoder counts DecodeError; anything else propagates and fails here


def _serial_stream_drivers() -> list[str]:
    """Drivers that only listen on a serial port (a polling driver needs its simulator to answer: not here)."""
    from drivers.polled import PolledDriver

    out = []
    for d in STREAMS:
        cls = REG.family_of(d).driver_class(d)
        if issubclass(cls, StreamDriver) and not issubclass(cls, PolledDriver):
            out.append(d)
    return out


@pytest.mark.parametrize("driver", _serial_stream_drivers())
async def test_simulator_through_a_pty_into_the_real_driver(driver: str) -> None:
    """The simulator's bytes on a real pty, read by the real driver: exactly the decoder's values, in order."""
    chunks, decoded, _ = _simulate(driver, 12)
    want = [v for vs in decoded for v in vs]
    pty = PtyDevice()
    dev = DeviceConfig.model_validate({"id": "dut", "driver": driver, "port": pty.port, **_device_options(driver)})
    got: list[Reading] = []
    cls = REG.family_of(driver).driver_class(driver)
    ctx = DeviceContext(dev, got.append)
    task = asyncio.create_task(cls(dev, ctx).run())
    try:
        deadline = time.monotonic() + 10
        while ctx.link != "connected":
            assert time.monotonic() < deadline, "driver never opened the pty"
            await asyncio.sleep(0.01)
        for c in chunks:
            pty.write(c)
            if cls.idle_flush is not None:
                await asyncio.sleep(cls.idle_flush * 2)  # the device's own pause between bursts
        deadline = time.monotonic() + 20
        while len(got) < len(want):
            assert time.monotonic() < deadline, (len(got), len(want), dict(ctx.errors))
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pty.close()
    assert [dict(r.values) for r in got][: len(want)] == want
    assert {r.driver for r in got} == {driver}


ASKED = sorted(d for d in SIMULATED if REG.drivers[d].entry.responder)


class _Recorder:
    """A responder that logs (readings delivered so far, request, reply): the poll each exchange belongs to."""

    def __init__(self, inner: Any, got: list[Reading]) -> None:
        self.inner, self.got = inner, got
        self.log: list[tuple[int, bytes, bytes]] = []

    def answer(self, data: bytes) -> bytes:
        reply: bytes = self.inner.answer(data)
        self.log.append((len(self.got), data, reply))
        return reply


def test_every_serial_family_gets_a_round_trip() -> None:
    serial = {d for d in SIMULATED if REG.family_of(d).driver_class(d).transport == "serial"}
    # the CAN bus is simulated by an slcan adapter on a pty: tests/test_can.py and test_e2e_can.py
    missing = serial - {"can"} - set(_serial_stream_drivers()) - set(ASKED)
    assert not missing, f"{sorted(missing)}: a polling driver's family needs a responder (DriverEntry.responder)"
    assert set(ASKED) >= {"modbus", "senseair_s8", "vesc", "jbd_bms", "obd2"}


@pytest.mark.parametrize("driver", ASKED)
async def test_the_real_driver_polls_the_simulated_device(driver: str) -> None:
    """The real polling driver asks the family's simulated device (a responding transport, or a pty for a
    driver that opens its port itself): each reading is exactly what the simulation's decoder makes of
    that poll's requests and replies, with no error on either side."""
    from drivers.transport.simulated import PtyResponder, RespondingTransport

    fam = REG.family_of(driver)
    cls = fam.driver_class(driver)
    got: list[Reading] = []
    rec = _Recorder(fam.responder(driver), got)
    pty = None if issubclass(cls, StreamDriver) else PtyResponder(rec)
    dev = DeviceConfig.model_validate({"id": "dut", "driver": driver, "port": pty.port if pty else "sim:dut",
                                       "poll_interval": 0.05, "timeout": 5.0, **_device_options(driver)})
    ctx = DeviceContext(dev, got.append)
    if pty is None:
        transport = RespondingTransport(rec, "simulated")

        async def open_transport() -> RespondingTransport:
            return transport

        ctx.open_transport = open_transport
    tasks = [asyncio.create_task(cls(dev, ctx).run())] + ([asyncio.create_task(pty.run())] if pty else [])
    try:
        deadline = time.monotonic() + 20
        while len(got) < 8:
            assert time.monotonic() < deadline, (len(got), dict(ctx.errors))
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.02)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    _, decoder = fam.simulation(driver, SimParams())
    for k, reading in enumerate(got[:8]):
        exchanged = b"".join(q + r for i, q, r in rec.log if i == k)
        assert [dict(reading.values)] == decoder.feed(exchanged) + decoder.flush(), k
    assert dict(ctx.errors) == {} and dict(decoder.errors) == {}
    assert {r.driver for r in got} == {driver}
    assert set(REG.drivers[driver].entry.quantities) <= set(got[-1].values)


@pytest.mark.parametrize(("family", "protocol"), RECOGNISED)
def test_probe_recognises_the_simulator(family: str, protocol: str) -> None:
    fam = REG.families[family]
    rec = next(r for r in fam.probe if r.protocol == protocol)
    driver = rec.driver if rec.driver in {e.name for e in fam.drivers if e.simulator} else next(
        e.name for e in fam.drivers if e.simulator)
    chunks, _, _ = _simulate(driver, 20, rec.sim_format)
    best = recognised(analyse(b"".join(chunks)))
    assert best is not None and best.protocol == protocol
    assert best.driver in {e.name for e in fam.drivers}


SCHEMA = json_schema()


TRANSPORT_VALUES = {"port": "/dev/ttyUSB0", "baud": 9600, "parity": "E", "stopbits": 2, "bytesize": 7,
                    "replay": "capture.bin", "address": "C7:F5:2A:A1:B2:C3"}


def _minimal(driver: str) -> dict[str, Any]:
    cls = REG.family_of(driver).driver_class(driver)
    dev: dict[str, Any] = {"id": "d1", "driver": driver}
    if cls.transport == "serial":
        dev["port"] = "/dev/ttyUSB0"
    if cls.transport == "ble":
        dev["address"] = "C7:F5:2A:A1:B2:C3"
    if driver == "sim":
        dev["family"] = SIMULATED[0]
    return {**dev, **_device_options(driver)}


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_schema_has_the_driver_keys_and_agrees_with_config_check(driver: str) -> None:
    cls = REG.family_of(driver).driver_class(driver)
    dev_schema = SCHEMA["$defs"][f"Device_{driver}"]
    props = set(dev_schema["properties"])
    assert set(cls.Options.model_fields) <= props
    assert dev_schema["properties"]["driver"] == {"const": driver, "title": "Driver"}
    serial, ble = "serial" in cls.transports(), bool({"ble", "none"} & set(cls.transports()))
    want = {k for k in SERIAL_KEYS if serial and (k != "replay" or cls.supports_replay)} | (set(BLE_KEYS) if ble else set())
    assert props & {*SERIAL_KEYS, *BLE_KEYS} == want
    validator = jsonschema.Draft202012Validator(SCHEMA)
    doc = {"gateway": {"id": "gw"}, "devices": [_minimal(driver)]}
    assert list(validator.iter_errors(doc)) == []
    parse_config(doc, check_files=False)  # the product agrees
    for key in sorted({*SERIAL_KEYS, *BLE_KEYS} - want):  # another transport's key: refused by both, by name
        other = {"gateway": {"id": "gw"}, "devices": [{**_minimal(driver), key: TRANSPORT_VALUES[key]}]}
        assert list(validator.iter_errors(other)) != [], key
        with pytest.raises(Exception, match=rf"devices\[0\]\.{key}: "):
            parse_config(other, check_files=False)
    bad = {"gateway": {"id": "gw"}, "devices": [{**_minimal(driver), "no_such_key": 1}]}
    assert list(validator.iter_errors(bad)) != []
    with pytest.raises(Exception, match=r"devices\[0\]\.no_such_key: unknown key"):
        parse_config(bad, check_files=False)


@pytest.mark.parametrize("driver", SIMULATED)
def test_sim_accepts_every_simulated_driver(driver: str) -> None:
    doc = {"gateway": {"id": "gw"}, "devices": [{"id": "s", "driver": "sim", "family": driver}]}
    parse_config(doc, check_files=False)
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc)) == []


def test_config_schema_cli_lists_every_registered_driver() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "config", "schema"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mapping = json.loads(r.stdout)["properties"]["devices"]["items"]["discriminator"]["mapping"]
    assert sorted(mapping) == DRIVERS
