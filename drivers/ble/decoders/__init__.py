"""Pure BLE advertisement decoders, one module per family: ruuvi, bthome, xiaomi, aranet4.

Hand-written rather than bthome-ble / xiaomi-ble / ruuvitag-sensor / aranet4 (see the
trade-off note in DESIGN.md): those pull Home Assistant's Bluetooth stack or bleak itself
onto the Pi. These decoders are pure functions on an `Advert` (no I/O, no bleak import);
the tests check them against the published test vectors and differentially against the
maintained libraries, installed as test-only dependencies, and fuzz them.

Contract of every family module:
  matches(adv) -> bool                  cheap check: does the advert belong to the family?
  decode(adv, key=None) -> dict | None  values in canonical units; None when the advert is
                                        not a data frame of the family; DecodeError (never
                                        any other exception) for malformed or undecryptable
                                        frames; KeyRequired (a DecodeError) for encrypted
                                        frames without a key.
  encode(address, values, ...) -> Advert  builds real wire bytes (simulator, scripted BlueZ)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from edge_common.errors import DriverError

if TYPE_CHECKING:  # cryptography (~7 MB resident) loads only when an encrypted advert is decoded
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

Values = dict[str, float | int | str | bool]

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


class DecodeError(DriverError):
    """An advertisement of a known family is malformed or cannot be decrypted."""


class KeyRequired(DecodeError):
    """The advertisement is encrypted and no key was given for the device."""


@dataclass(frozen=True, slots=True)
class Advert:
    """One received advertisement (bleak's AdvertisementData flattened)."""

    address: str
    name: str | None
    rssi: int | None
    manufacturer_data: Mapping[int, bytes]
    service_data: Mapping[str, bytes]
    service_uuids: tuple[str, ...] = field(default=())


def uuid16(short: int) -> str:
    """The full 128-bit lower-case UUID string of a 16-bit Bluetooth UUID."""
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"


def service_data(adv: Advert, short: int) -> bytes | None:
    """The service data for a 16-bit UUID, or None."""
    data = adv.service_data.get(uuid16(short))
    if data is None and adv.service_data:
        want = uuid16(short)
        for k, v in adv.service_data.items():
            if k.lower() == want:
                return bytes(v)
    return None if data is None else bytes(data)


def mac_bytes(address: str) -> bytes:
    """'AA:BB:CC:DD:EE:FF' -> 6 bytes in display order; DecodeError if it is no MAC."""
    try:
        raw = bytes.fromhex(address.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise DecodeError(f"not a MAC address: {address!r}")
    return raw


@functools.lru_cache(maxsize=128)
def aes_ccm(key: bytes) -> AESCCM:
    """AES-CCM with a 4-byte tag for `key` (cached: one cipher object per device key)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    return AESCCM(key, tag_length=4)


def ccm_decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes | None) -> bytes | None:
    """AES-CCM (4-byte tag) decryption; None when the tag does not match (wrong key, garbled)."""
    from cryptography.exceptions import InvalidTag

    try:
        return aes_ccm(key).decrypt(nonce, data, aad)
    except InvalidTag:
        return None


def mac_str(raw: bytes) -> str:
    """6 bytes in display order -> 'AA:BB:CC:DD:EE:FF'."""
    return ":".join(f"{b:02X}" for b in raw)


class _AdvertFamilies(Mapping[str, ModuleType]):
    """Family name -> decoder module of every registered BLE advert family (imported on first use)."""

    _cache: tuple[int, int, dict[str, ModuleType]] = (-1, -1, {})

    def _modules(self) -> dict[str, ModuleType]:
        from drivers.registry import registry

        reg = registry()
        if self._cache[:2] != (id(reg), reg.version):  # identify() runs per advert: resolve once
            mods = {f.name: reg.advert_decoder(f.name) for f in reg.advert_families()}
            self._cache = (id(reg), reg.version, mods)
        return self._cache[2]

    def __getitem__(self, name: str) -> ModuleType:
        return self._modules()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules())

    def __len__(self) -> int:
        return len(self._modules())


FAMILIES: Mapping[str, ModuleType] = _AdvertFamilies()


def identify(adv: Advert) -> str | None:
    """The name of the family whose decoder would take this advert, or None."""
    for name, module in FAMILIES.items():
        if module.matches(adv):
            return name
    return None


__all__ = [
    "FAMILIES",
    "Advert",
    "DecodeError",
    "KeyRequired",
    "Values",
    "aes_ccm",
    "identify",
    "mac_bytes",
    "mac_str",
    "service_data",
    "uuid16",
]
