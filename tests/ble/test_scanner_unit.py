"""Pure parts of the scanner: per-subscription dedupe and rate limit, error classification."""

from __future__ import annotations

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakDBusError, BleakError

from drivers.ble.decoders import Advert
from drivers.ble.scanner import Subscription, _is_passive_refusal, describe_error


def adv(data: bytes) -> Advert:
    return Advert(address="C7:F5:2A:A1:B2:C3", name=None, rssi=-60, manufacturer_data={0x0499: data},
                  service_data={})


def test_identical_repeats_dropped_until_repeat_interval() -> None:
    got: list[Advert] = []
    s = Subscription("C7:F5:2A:A1:B2:C3", "ruuvi", got.append, min_interval=0, expected_interval=60,
                     repeat_interval=30)
    for t in (0.0, 1.0, 2.0, 29.9):
        s.offer(adv(b"A"), b"A", t)
    s.offer(adv(b"B"), b"B", 30.0)
    s.offer(adv(b"B"), b"B", 60.5)  # same payload again after repeat_interval: a fresh sample
    assert [a.manufacturer_data[0x0499] for a in got] == [b"A", b"B", b"B"]
    assert (s.seen, s.dispatched, s.duplicates, s.rate_limited) == (6, 3, 3, 0)


def test_min_interval_keeps_the_first_of_a_burst() -> None:
    got: list[Advert] = []
    s = Subscription("X", None, got.append, min_interval=10, expected_interval=None, repeat_interval=60)
    for i in range(25):
        s.offer(adv(bytes([i])), bytes([i]), i * 1.0)
    assert [a.manufacturer_data[0x0499][0] for a in got] == [0, 10, 20]
    assert (s.dispatched, s.rate_limited) == (3, 22)


def test_a_failing_consumer_is_counted_not_raised() -> None:
    def boom(_a: Advert) -> None:
        raise ValueError("bad")

    s = Subscription("X", None, boom, min_interval=0, expected_interval=None, repeat_interval=60)
    s.offer(adv(b"A"), b"A", 0.0)
    assert s.callback_errors == 1


def test_passive_refusal_is_told_apart_from_other_failures() -> None:
    assert _is_passive_refusal(BleakError(
        "passive scanning on Linux requires BlueZ >= 5.56 with --experimental enabled and Linux kernel >= 5.10"))
    assert _is_passive_refusal(BleakDBusError("org.bluez.Error.NotSupported", []))
    assert not _is_passive_refusal(BleakBluetoothNotAvailableError(
        "No powered Bluetooth adapters found.", BleakBluetoothNotAvailableReason.POWERED_OFF))
    assert not _is_passive_refusal(BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"]))
    assert describe_error(BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"])) \
        == "org.bluez.Error.InProgress: Operation already in progress"
