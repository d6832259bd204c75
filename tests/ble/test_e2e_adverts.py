"""End to end: scripted BlueZ adverts -> bleak (BlueZ backend) -> agent process -> Mosquitto."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from drivers.ble.decoders import FAMILIES, Advert
from tests.support import ble_vectors as v
from tests.support.agentproc import AgentProcess
from tests.support.bluez import ScriptedBlueZ
from tests.support.broker import Broker
from tests.support.mqtt import Subscriber
from tests.support.wait import wait_until

RUUVI = "C7:F5:2A:A1:B2:C3"
BTHOME = "A4:C1:38:00:00:01"
XIAOMI = "A4:C1:38:12:34:56"
ATC = "A4:C1:38:65:43:21"
ARANET = "E4:12:34:56:78:9A"


def device(dev_id: str, driver: str, address: str, extra: str = "") -> str:
    return f"""
[[devices]]
id = "{dev_id}"
driver = "{driver}"
address = "{address}"
expected_interval = "60s"
tags = {{ room = "A101" }}
{extra}
"""


def decoded(family: str, address: str, adv: v.Adv, key: str | None = None) -> dict[str, Any]:
    """What the family decoder makes of the advert (the driver must forward exactly this)."""
    a = Advert(address=address, name=adv.name, rssi=-60, manufacturer_data=adv.manufacturer_data,
               service_data=adv.service_data, service_uuids=adv.service_uuids)
    out = FAMILIES[family].decode(a, bytes.fromhex(key) if key else None)
    assert out
    return dict(out)


def advertise_until_scanning(bz: ScriptedBlueZ, agent: AgentProcess) -> None:
    agent.wait_log("BLE scanner running", timeout=20)
    wait_until(lambda: bz.discovering or bool(bz.active_monitors()), 10, "scanner registered with BlueZ")


@pytest.fixture
def sub(broker: Broker) -> Any:
    s = Subscriber(broker.host, broker.port, "edge/gw-test/#")
    yield s
    s.close()


def test_each_family_reaches_the_broker_exactly(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    agent = ble_agent(
        device("a101-ruuvi", "ruuvi", RUUVI)
        + device("a101-bthome", "bthome", BTHOME)
        + device("a101-enc", "bthome", v.BTHOME_ENC_MAC, f'key = "{v.BTHOME_KEY}"')
        + device("a101-lywsd", "xiaomi", XIAOMI)
        + device("a101-atc", "xiaomi", ATC)
        + device("a101-co2", "aranet4", ARANET)
    )
    advertise_until_scanning(bz, agent)
    sent: list[tuple[str, str, str, v.Adv, str | None]] = [
        ("a101-ruuvi", "ruuvi", RUUVI, v.Adv("Ruuvi B2C3", {0x0499: v.RUUVI_DF5_VALID}), None),
        ("a101-bthome", "bthome", BTHOME, v.Adv("SBHT-003C", service_data={v.BTHOME_UUID: v.BTHOME_PLAIN}), None),
        ("a101-enc", "bthome", v.BTHOME_ENC_MAC, v.Adv(None, service_data={v.BTHOME_UUID: v.BTHOME_ENCRYPTED}), v.BTHOME_KEY),
        ("a101-lywsd", "xiaomi", XIAOMI, v.Adv("LYWSD03MMC", service_data={v.ENV_SENSING_UUID: v.pvvx(XIAOMI, 21.37, 45.5, 2950, 87, 7)}), None),
        ("a101-atc", "xiaomi", ATC, v.Adv("ATC_654321", service_data={v.ENV_SENSING_UUID: v.atc1441(ATC, -3.4, 81, 66, 2800, 9)}), None),
        ("a101-co2", "aranet4", ARANET, v.Adv("Aranet4 1A2B3", {0x0702: v.aranet4(612, 22.35, 1013.2, 41, 88)}), None),
    ]
    for _, _, addr, adv, _ in sent:
        assert bz.advertise(addr, **adv.kwargs())  # type: ignore[arg-type]
    sub.wait_for(lambda: len(sub.readings()) >= len(sent), 20, "one reading per device")
    got = {r["device"]: r for r in sub.readings()}
    assert len(sub.readings()) == len(sent)
    for dev_id, fam, addr, adv, key in sent:
        r = got[dev_id]
        assert r["driver"] == fam
        assert r["tags"] == {"room": "A101"}
        assert r["values"] == decoded(fam, addr, adv, key)
    # Published vectors, canonical units.
    assert got["a101-ruuvi"]["values"]["temperature"] == 24.3
    assert got["a101-ruuvi"]["values"]["humidity"] == 53.49
    assert got["a101-ruuvi"]["values"]["pressure"] == 1000.44
    assert got["a101-ruuvi"]["values"]["battery_voltage"] == 2.977
    for dev in ("a101-bthome", "a101-enc"):
        assert got[dev]["values"]["temperature"] == 25.06
        assert got[dev]["values"]["humidity"] == 50.55
    assert got["a101-lywsd"]["values"]["temperature"] == 21.37
    assert got["a101-atc"]["values"]["temperature"] == -3.4
    assert got["a101-co2"]["values"]["co2"] == 612
    assert agent.terminate() == 0


def test_repeats_are_dropped_and_order_kept(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    agent = ble_agent(device("a101-ruuvi", "ruuvi", RUUVI), uplink='health_interval = "1s"')
    advertise_until_scanning(bz, agent)
    temps = [20.0 + i * 0.25 for i in range(20)]
    for seq, t in enumerate(temps):
        frame = v.ruuvi_df5(t, 40.0, 1001.0, seq, RUUVI)
        # Each measurement is advertised 3 times; BlueZ passes the repeats on as RSSI changes.
        for rssi in (-60, -71, -65):
            assert bz.advertise(RUUVI, name="Ruuvi B2C3", rssi=rssi, manufacturer_data={0x0499: frame})
    sub.wait_for(lambda: len(sub.readings()) >= 20, 20, "20 readings")
    got = sub.readings()
    assert [r["values"]["temperature"] for r in got] == temps
    assert [r["seq"] for r in got] == list(range(1, 21))
    # A malformed advert from the same tag is counted, not emitted.
    assert bz.advertise(RUUVI, manufacturer_data={0x0499: b"\x05\x01\x02"})
    assert bz.advertise(RUUVI, manufacturer_data={0x0499: v.ruuvi_df5(30.0, 40.0, 1001.0, 99, RUUVI)})
    sub.wait_for(lambda: len(sub.readings()) >= 21, 20, "reading after the malformed advert")
    assert len(sub.readings()) == 21
    sub.wait_for(lambda: ble_health(sub).get("devices", {}).get(RUUVI, {}).get("seen") == 62, 20, "health")
    stats = ble_health(sub)["devices"][RUUVI]
    assert (stats["dispatched"], stats["duplicates"]) == (22, 40)
    assert agent.terminate() == 0


def ble_health(sub: Subscriber) -> dict[str, Any]:
    msgs = sub.on("/health")
    return msgs[-1].json().get("ble", {}) if msgs else {}


def test_min_interval_limits_a_chatty_tag(
    bluez_factory: Callable[..., ScriptedBlueZ], ble_agent: Callable[..., AgentProcess], sub: Subscriber
) -> None:
    bz = bluez_factory()
    agent = ble_agent(device("a101-bthome", "bthome", BTHOME, 'min_interval = "1h"'),
                      uplink='health_interval = "1s"')
    advertise_until_scanning(bz, agent)
    for pid in range(50):
        assert bz.advertise(BTHOME, service_data={v.BTHOME_UUID: v.bthome_plain(pid, 20 + pid / 10, 50)})
    sub.wait_for(lambda: ble_health(sub).get("devices", {}).get(BTHOME, {}).get("seen") == 50, 20,
                 "health counting all 50 adverts")
    stats = ble_health(sub)["devices"][BTHOME]
    assert (stats["dispatched"], stats["rate_limited"], stats["duplicates"]) == (1, 49, 0)
    # health can arrive before the one dispatched reading has been committed and published
    sub.wait_for(lambda: len(sub.readings()) >= 1, 20, "the one dispatched reading")
    assert agent.terminate() == 0
    got = sub.readings()
    assert len(got) == 1
    assert got[0]["values"]["packet_id"] == 0
