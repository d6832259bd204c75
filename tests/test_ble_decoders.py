"""BLE advert decoders: published vectors (exact), errors, encode/decode round trips, fuzzing."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import DriverError, EdgeAgentError
from drivers.ble.decoders import (
    FAMILIES,
    Advert,
    DecodeError,
    KeyRequired,
    aranet4,
    bthome,
    identify,
    ruuvi,
    uuid16,
    xiaomi,
)
from tests.ble_vectors import (
    BTHOME_KEY,
    MIBEACON_KEY,
    VECTORS,
    Vector,
    aranet_adv,
    ruuvi_adv,
    sd_adv,
)

ADDR = "A4:C1:38:8D:18:B2"


@pytest.mark.parametrize("v", VECTORS, ids=[v.id for v in VECTORS])
def test_published_vector(v: Vector) -> None:
    got = FAMILIES[v.family].decode(v.advert, v.key)
    assert got == v.expected
    if got is not None and v.expected is not None:
        assert list(got) == list(v.expected) or set(got) == set(v.expected)
        assert {k: type(x) for k, x in got.items()} == {k: type(x) for k, x in v.expected.items()}


@pytest.mark.parametrize("v", VECTORS, ids=[v.id for v in VECTORS])
def test_identify_published_vector(v: Vector) -> None:
    assert identify(v.advert) == v.family
    assert FAMILIES[v.family].matches(v.advert)
    assert [n for n, m in FAMILIES.items() if m.matches(v.advert)] == [v.family]


def test_identify_and_decode_foreign_adverts() -> None:
    apple = Advert("11:22:33:44:55:66", "iPhone", -50, {0x004C: b"\x10\x05\x01"}, {})
    eddystone = Advert("11:22:33:44:55:66", None, -50, {}, {uuid16(0xFEAA): b"\x10\x00"})
    for adv in (apple, eddystone):
        assert identify(adv) is None
        for module in FAMILIES.values():
            assert not module.matches(adv)
            assert module.decode(adv) is None


def test_decode_error_is_an_edge_agent_driver_error() -> None:
    assert issubclass(DecodeError, DriverError) and issubclass(DecodeError, EdgeAgentError)
    assert issubclass(KeyRequired, DecodeError)


def test_service_data_key_is_matched_case_insensitively() -> None:
    adv = Advert(ADDR, None, -60, {}, {uuid16(0xFCD2).upper(): b"\x40\x09\x60"})
    assert identify(adv) == "bthome"
    assert bthome.decode(adv) == {"count": 96}


# ---------------------------------------------------------------- error paths


def _raises(exc: type[Exception], fn: Callable[[], object], match: str) -> None:
    with pytest.raises(exc, match=match):
        fn()


def test_bthome_errors() -> None:
    enc = sd_adv(
        0xFCD2, b"\x41\xa4\x72\x66\xc9\x5f\x73\x00\x11\x22\x33\x78\x23\x72\x14", "54:48:E6:8F:80:A5"
    )
    wrong = bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")
    _raises(KeyRequired, lambda: bthome.decode(enc), "needs a key")
    _raises(
        DecodeError, lambda: bthome.decode(enc, wrong), "MIC check failed for 54:48:E6:8F:80:A5"
    )
    _raises(DecodeError, lambda: bthome.decode(enc, BTHOME_KEY[:12]), "key must be 16 bytes")
    other_mac = sd_adv(0xFCD2, enc.service_data[uuid16(0xFCD2)], "54:48:E6:8F:80:A6")
    _raises(DecodeError, lambda: bthome.decode(other_mac, BTHOME_KEY), "MIC check failed")
    plain = sd_adv(0xFCD2, b"\x40\x02\xca\x09", ADDR)
    _raises(DecodeError, lambda: bthome.decode(plain, BTHOME_KEY), "unencrypted advert")
    _raises(
        DecodeError, lambda: bthome.decode(sd_adv(0xFCD2, b"\xe1\x02\x00\x0c", ADDR)), "version 7"
    )
    _raises(DecodeError, lambda: bthome.decode(sd_adv(0xFCD2, b"", ADDR)), "empty")
    _raises(DecodeError, lambda: bthome.decode(sd_adv(0xFCD2, b"\x40\x02\xca", ADDR)), "truncated")
    _raises(DecodeError, lambda: bthome.decode(sd_adv(0xFCD2, b"\x40\x53", ADDR)), "no length byte")
    _raises(
        DecodeError,
        lambda: bthome.decode(sd_adv(0xFCD2, b"\x40\xfe\xca\x09", ADDR)),
        "unknown object",
    )
    _raises(
        DecodeError,
        lambda: bthome.decode(
            sd_adv(0xFCD2, b"\x41\xba\x0d\xb0\x7a\xee\xf6\x00", ADDR), BTHOME_KEY
        ),
        "too short",
    )


def test_bthome_packet_id_rule_and_counter() -> None:
    # the sequence of bthome-ble's test_identical_packet_id / test_increasing_packet_id
    assert bthome.is_newer_packet(None, 9)
    assert not bthome.is_newer_packet(9, 9)
    assert not bthome.is_newer_packet(9, 8)
    assert bthome.is_newer_packet(189, 190)
    assert bthome.is_newer_packet(190, 253)
    assert bthome.is_newer_packet(253, 47)
    assert not bthome.is_newer_packet(0, 64)
    enc = sd_adv(
        0xFCD2, b"\x41\xe4\x45\xf3\xc9\x96\x2b\x33\x22\x11\x00\x6c\x7c\x45\x19", "54:48:E6:8F:80:A5"
    )
    assert bthome.frame_counter(enc) == 1122867
    assert bthome.frame_counter(sd_adv(0xFCD2, b"\x40\x09\x60", ADDR)) is None


def test_xiaomi_errors() -> None:
    enc = sd_adv(
        0xFE95,
        b"XX[\x05P\xf4\x83\x028\xc1\xa4\x95\xefXv<&\x00\x00\x97\xe2\xab\xb5",
        "A4:C1:38:02:83:F4",
    )
    _raises(KeyRequired, lambda: xiaomi.decode(enc), "needs a key")
    _raises(
        DecodeError,
        lambda: xiaomi.decode(enc, BTHOME_KEY),
        "MIC check failed for A4:C1:38:02:83:F4",
    )
    pvvx = sd_adv(0x181A, "11d603fbfa7b6dfb1e26fd", ADDR)
    _raises(KeyRequired, lambda: xiaomi.decode(pvvx), "needs a key")
    _raises(DecodeError, lambda: xiaomi.decode(pvvx, MIBEACON_KEY), "MIC check failed")
    plain = sd_adv(0x181A, "f4830238c1a4a9066911b60b58f70d", ADDR)
    _raises(DecodeError, lambda: xiaomi.decode(plain, MIBEACON_KEY), "unencrypted advert")
    _raises(
        DecodeError, lambda: xiaomi.decode(sd_adv(0x181A, "a4c1380283f400a22f5f", ADDR)), "10 bytes"
    )
    legacy = sd_adv(0xFE95, "5830aa01051234567890ab0102", ADDR)
    _raises(DecodeError, lambda: xiaomi.decode(legacy, MIBEACON_KEY), "legacy")
    _raises(DecodeError, lambda: xiaomi.decode(sd_adv(0xFE95, "5050", ADDR)), "2 bytes")
    truncated = sd_adv(0xFE95, "50305b05034c94b438c1a40d100410", ADDR)
    _raises(DecodeError, lambda: xiaomi.decode(truncated), "truncated")
    # frames without objects (pairing / heartbeat) and mesh frames carry nothing
    assert xiaomi.decode(sd_adv(0xFE95, "10305b05034c94b438c1a4", ADDR)) is None
    assert xiaomi.decode(sd_adv(0xFE95, "d0305b05034c94b438c1a40d10041001ea01", ADDR)) is None


def test_ruuvi_and_aranet_errors() -> None:
    _raises(DecodeError, lambda: ruuvi.decode(ruuvi_adv("0512FC53")), "needs 24 bytes, got 4")
    _raises(DecodeError, lambda: ruuvi.decode(ruuvi_adv("")), "empty")
    _raises(
        DecodeError, lambda: ruuvi.decode(ruuvi_adv("03291A64CE1EFC18F94202CA0B53")), "fraction 100"
    )
    assert ruuvi.decode(ruuvi_adv("08" + "00" * 23)) is None  # encrypted format 8: not decodable
    _raises(
        DecodeError, lambda: aranet4.decode(aranet_adv(b"\x01\x00\x02", "Aranet4 1")), "3 bytes"
    )
    short = b"!\x05\x03\x01\x00\x05\x00\x01C\x04\x9f\x01\x8b'5\x0c\x02<\x00\x10"
    _raises(DecodeError, lambda: aranet4.decode(aranet_adv(short, "Aranet4 12345")), "20 bytes")


# ---------------------------------------------------------------- encoders round-trip

_T200 = st.integers(-32767, 32767).map(lambda k: k / 200)


@settings(max_examples=300, deadline=None)
@given(
    t=_T200,
    h=st.integers(0, 65534).map(lambda k: k / 400),
    p=st.integers(0, 65534),
    acc=st.tuples(*[st.integers(-32767, 32767)] * 3),
    bv=st.integers(0, 2046),
    tx=st.integers(0, 30),
    move=st.integers(0, 254),
    seq=st.integers(0, 65534),
)
def test_ruuvi_df5_round_trip(
    t: float, h: float, p: int, acc: tuple[int, int, int], bv: int, tx: int, move: int, seq: int
) -> None:
    values = dict(
        temperature=t,
        humidity=round(h, 4),
        pressure=(p + 50000) / 100,
        acceleration_x=acc[0] / 1000,
        acceleration_y=acc[1] / 1000,
        acceleration_z=acc[2] / 1000,
        battery_voltage=(bv + 1600) / 1000,
        tx_power=-40 + 2 * tx,
        movement_counter=move,
        measurement_sequence=seq,
    )
    adv = ruuvi.encode("CB:B8:33:4C:88:4F", values)
    assert identify(adv) == "ruuvi"
    assert ruuvi.decode(adv) == values


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from([6, "E1"]),
    t=_T200,
    pm=st.integers(0, 10000),
    co2=st.integers(0, 40000),
    voc=st.integers(0, 500),
    nox=st.integers(0, 500),
    cal=st.booleans(),
    seq=st.integers(0, 255),
)
def test_ruuvi_air_round_trip(
    fmt: int | str, t: float, pm: int, co2: int, voc: int, nox: int, cal: bool, seq: int
) -> None:
    values: dict[str, float | int | bool] = dict(
        temperature=t,
        pm2_5=pm / 10,
        co2=co2,
        voc_index=voc,
        nox_index=nox,
        calibration_in_progress=cal,
        measurement_sequence=seq,
    )
    if fmt == "E1":
        values.update(pm1_0=pm / 10, pm4_0=pm / 10, pm10=pm / 10)
    assert ruuvi.decode(ruuvi.encode("CB:B8:33:4C:88:4F", values, data_format=fmt)) == values


_BTHOME_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "packet_id": st.integers(0, 255),
        "battery": st.integers(0, 100),
        "temperature": st.integers(-32768, 32767).map(lambda k: k / 100),
        "humidity": st.integers(0, 65535).map(lambda k: k / 100),
        "pressure": st.integers(0, 2**24 - 1).map(lambda k: k / 100),
        "illuminance": st.integers(0, 2**24 - 1).map(lambda k: k / 100),
        "co2": st.integers(0, 65535),
        "pm2_5": st.integers(0, 65535),
        "pm10": st.integers(0, 65535),
        "voltage": st.integers(0, 65535).map(lambda k: k / 1000),
        "moisture": st.integers(0, 65535).map(lambda k: k / 100),
        "motion": st.booleans(),
        "door": st.booleans(),
        "window": st.booleans(),
        "button": st.sampled_from(sorted(bthome.BUTTON_EVENTS.values())),
        "dimmer": st.integers(-255, 255).filter(bool),
        "text": st.text(min_size=1, max_size=8),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    values=_BTHOME_VALUES,
    key=st.none() | st.binary(min_size=16, max_size=16),
    counter=st.integers(0, 2**32 - 1),
    mac_included=st.booleans(),
)
def test_bthome_round_trip(
    values: dict[str, float | int | bool | str], key: bytes | None, counter: int, mac_included: bool
) -> None:
    if not values:
        values = {"battery": 50}
    adv = bthome.encode(ADDR, values, key=key, counter=counter, mac_included=mac_included)
    assert identify(adv) == "bthome"
    assert bthome.decode(adv, key) == values
    if key is not None:
        assert bthome.frame_counter(adv) == counter


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(["pvvx", "atc1441", "mibeacon"]),
    encrypted=st.booleans(),
    t=st.integers(-400, 600),
    h=st.integers(0, 1000),
    batt=st.integers(0, 100),
    mv=st.integers(1800, 3600),
    packet=st.integers(0, 255),
    key=st.binary(min_size=16, max_size=16),
)
def test_xiaomi_round_trip(
    fmt: str, encrypted: bool, t: int, h: int, batt: int, mv: int, packet: int, key: bytes
) -> None:
    k = key if encrypted else None
    values: dict[str, float | int] = {
        "temperature": t / 10,
        "humidity": h / 10,
        "battery": batt,
        "battery_voltage": mv / 1000,
    }
    adv = xiaomi.encode(ADDR, values, fmt=fmt, key=k, packet_id=packet, product_id=0x0347)
    assert identify(adv) == "xiaomi"
    got = xiaomi.decode(adv, k)
    assert got is not None
    want = dict(values)
    if fmt == "atc1441" and not encrypted:
        want["humidity"] = round(h / 10)
    if fmt == "atc1441" and encrypted:
        want["temperature"] = round(t / 10 * 2) / 2
        want["humidity"] = round(h / 10 * 2) / 2
    if encrypted or fmt == "mibeacon":
        del want["battery_voltage"]
    want["packet_id"] = packet
    assert got == pytest.approx(want, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    co2=st.integers(0, 9999),
    t=st.integers(0, 1200),
    p=st.integers(8000, 11000),
    h=st.integers(0, 100),
    batt=st.integers(0, 100),
    status=st.sampled_from(["error", "green", "yellow", "red"]),
    interval=st.sampled_from([60, 120, 300, 600]),
    age=st.integers(0, 600),
    ctr=st.integers(0, 255),
    name=st.sampled_from(["Aranet4 1234F", None]),
)
def test_aranet4_round_trip(
    co2: int,
    t: int,
    p: int,
    h: int,
    batt: int,
    status: str,
    interval: int,
    age: int,
    ctr: int,
    name: str | None,
) -> None:
    values = dict(
        co2=co2,
        temperature=t / 20,
        pressure=p / 10,
        humidity=h,
        battery=batt,
        status=status,
        interval=interval,
        age=age,
        packet_id=ctr,
    )
    adv = aranet4.encode("00:11:22:33:44:55", values, name=name)
    assert identify(adv) == "aranet4"
    assert aranet4.decode(adv) == values


# ---------------------------------------------------------------- fuzzing

# (family, where, key): `where` names the field the family looks in
_SLOTS: list[tuple[str, str, bytes | None]] = [
    ("ruuvi", "mfr:0499", None),
    ("aranet4", "mfr:0702", None),
    ("aranet4", "mfr:0702:Aranet4 1", None),
    ("aranet4", "mfr:0702:AranetRn 1", None),
    ("bthome", "sd:fcd2", None),
    ("bthome", "sd:fcd2", BTHOME_KEY),
    ("xiaomi", "sd:181a", None),
    ("xiaomi", "sd:181a", MIBEACON_KEY),
    ("xiaomi", "sd:fe95", None),
    ("xiaomi", "sd:fe95", MIBEACON_KEY),
]


def _place(where: str, data: bytes, address: str = ADDR) -> Advert:
    """An advert carrying `data` in the field named by `where`."""
    kind, ident, *name = where.split(":")
    if kind == "mfr":
        return Advert(address, name[0] if name else None, -60, {int(ident, 16): data}, {})
    return Advert(address, None, -60, {}, {uuid16(int(ident, 16)): data})


def _check(family: str, adv: Advert, key: bytes | None) -> str:
    """Decode; only a well-formed dict, None or DecodeError may come out."""
    try:
        out = FAMILIES[family].decode(adv, key)
    except DecodeError:
        return "error"
    if out is None:
        return "none"
    assert isinstance(out, dict)
    for k, v in out.items():
        assert isinstance(k, str) and k
        assert isinstance(v, (bool, int, float, str))
        if isinstance(v, float):
            assert math.isfinite(v)
    return "values"


def _seeds() -> dict[str, list[bytes]]:
    """Valid frames per field: every published vector's payload plus encoder output."""
    out: dict[str, list[bytes]] = {}
    for v in VECTORS:
        for company, data in v.advert.manufacturer_data.items():
            out.setdefault(f"mfr:{company:04x}", []).append(bytes(data))
        for uuid, data in v.advert.service_data.items():
            out.setdefault(f"sd:{uuid[4:8]}", []).append(bytes(data))
    out["sd:fcd2"].append(
        bthome.encode_service_data(
            ADDR, {"temperature": 21.5, "co2": 800}, key=BTHOME_KEY, counter=7
        )
    )
    th = {"temperature": 21.5, "humidity": 40}
    out["sd:fe95"].append(xiaomi.encode_mibeacon(ADDR, th, key=MIBEACON_KEY))
    out["sd:181a"].append(xiaomi.encode_custom(ADDR, th, key=MIBEACON_KEY))
    out["sd:181a"].append(xiaomi.encode_custom(ADDR, th, fmt="atc1441", key=MIBEACON_KEY))
    return out


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            del b[rng.randrange(len(b) + 1) :]
        elif op == 3:
            b += rng.randbytes(rng.randint(1, 8))
        elif b:
            del b[rng.randrange(len(b))]
    return bytes(b)


FUZZ_RANDOM_PER_SLOT = 3000
FUZZ_MUTATED_PER_SLOT = 3000


def test_fuzz_random_and_mutated_frames() -> None:
    """Seeded fuzz: 10 slots x (3000 random + 3000 mutated valid frames) = 60000 adverts."""
    rng = random.Random(20240604)
    seeds = _seeds()
    outcomes: dict[str, dict[str, int]] = {}
    n = 0
    for family, where, key in _SLOTS:
        count = outcomes.setdefault(family, {"error": 0, "none": 0, "values": 0})
        pool = seeds[where.rsplit(":", 1)[0] if where.count(":") == 2 else where]
        for _ in range(FUZZ_RANDOM_PER_SLOT):
            count[_check(family, _place(where, rng.randbytes(rng.randint(0, 48))), key)] += 1
            n += 1
        for _ in range(FUZZ_MUTATED_PER_SLOT):
            count[_check(family, _place(where, _mutate(rng, rng.choice(pool))), key)] += 1
            n += 1
    assert n == len(_SLOTS) * (FUZZ_RANDOM_PER_SLOT + FUZZ_MUTATED_PER_SLOT) == 60000
    assert sum(sum(c.values()) for c in outcomes.values()) == n
    # the inputs reach decoded values and errors in every family, not only a length check
    for family, count in outcomes.items():
        assert count["values"] > 300 and count["error"] > 300, (family, count)


@settings(max_examples=1500, deadline=None)
@given(
    data=st.binary(max_size=64),
    slot=st.integers(0, len(_SLOTS) - 1),
    mac=st.binary(min_size=6, max_size=6),
)
def test_fuzz_hypothesis(data: bytes, slot: int, mac: bytes) -> None:
    family, where, key = _SLOTS[slot]
    adv = _place(where, data, ":".join(f"{x:02X}" for x in mac))
    _check(family, adv, key)


def test_non_mac_address_is_a_decode_error() -> None:
    enc = b"\x41\xa4\x72\x66\xc9\x5f\x73\x00\x11\x22\x33\x78\x23\x72\x14"
    adv = Advert("/org/bluez/hci0/dev_x", None, None, {}, {uuid16(0xFCD2): enc})
    _raises(DecodeError, lambda: bthome.decode(adv, BTHOME_KEY), "not a MAC address")
