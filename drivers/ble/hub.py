"""Where BLE advert drivers get their adverts: `AdvertSource` (the shared scanner, or a simulator feeding it).

`AdvertHub` holds the subscriptions and dispatches each advert to those of its address (or family),
each `Subscription` with its own de-duplication and `min_interval` rate limit. `BleScanner`
(scanner.py) is a hub fed by bleak; the `sim` driver's `SimulatedAdverts` (simulator.py) a hub fed
by a family's simulator: the real advert driver reads either through the same subscription.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from drivers.ble.decoders import Advert

log = logging.getLogger(__name__)


class ScannerState(StrEnum):
    """The shared scanner's state, as `status` and `edge-agent scan` show it."""

    STOPPED = "stopped"
    STARTING = "starting"
    SCANNING = "scanning"
    STOPPING = "stopping"
    RECOVERING = "recovering"  # a fault was seen; restarting discovery
    WAITING_FOR_BLUETOOTHD = "waiting for bluetoothd"


class AdvertSource(Protocol):
    """What an advert driver reads: subscriptions by address, and whether adverts can come now."""

    state: ScannerState

    @property
    def mode(self) -> str | None: ...

    @property
    def scanning(self) -> bool: ...

    def subscribe(self, address: str | None, callback: Callable[[Advert], None], *, family: str | None = None,
                  min_interval: float = 0.0, expected_interval: float | None = None,
                  repeat_interval: float = 60.0) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...


class Subscription:
    """One consumer of adverts, with its own de-duplication and rate limit."""

    __slots__ = (
        "address",
        "callback",
        "callback_errors",
        "dispatched",
        "duplicates",
        "expected_interval",
        "family",
        "last_dispatch",
        "last_heard",
        "last_payload",
        "min_interval",
        "rate_limited",
        "repeat_interval",
        "seen",
    )

    def __init__(
        self,
        address: str | None,
        family: str | None,
        callback: Callable[[Advert], None],
        min_interval: float,
        expected_interval: float | None,
        repeat_interval: float,
    ) -> None:
        self.address = address
        self.family = family
        self.callback = callback
        self.min_interval = min_interval
        self.expected_interval = expected_interval
        self.repeat_interval = repeat_interval
        self.last_payload: object = None
        self.last_dispatch: float | None = None
        self.last_heard: float | None = None
        self.seen = self.dispatched = self.duplicates = self.rate_limited = self.callback_errors = 0

    def offer(self, adv: Advert, payload: object, now: float) -> None:
        """Dispatch unless it repeats the last payload or comes sooner than min_interval."""
        self.last_heard = now
        self.seen += 1
        since = math.inf if self.last_dispatch is None else now - self.last_dispatch
        if payload == self.last_payload and since < self.repeat_interval:
            self.duplicates += 1
            return
        if since < self.min_interval:
            self.rate_limited += 1
            return
        self.last_payload = payload
        self.last_dispatch = now
        self.dispatched += 1
        try:
            self.callback(adv)
        except Exception:
            self.callback_errors += 1
            log.exception("BLE advert consumer for %s failed", self.address or self.family)

    def view(self, now: float) -> dict[str, Any]:
        return {
            "family": self.family,
            "seen": self.seen,
            "dispatched": self.dispatched,
            "duplicates": self.duplicates,
            "rate_limited": self.rate_limited,
            "last_heard_age": None if self.last_heard is None else round(now - self.last_heard, 1),
        }


class AdvertHub:
    """Subscriptions by address or family, and the dispatch of one advert to them."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Subscription]] = {}
        self._family_subs: list[Subscription] = []

    def subscribe(
        self,
        address: str | None,
        callback: Callable[[Advert], None],
        *,
        family: str | None = None,
        min_interval: float = 0.0,
        expected_interval: float | None = None,
        repeat_interval: float = 60.0,
    ) -> Subscription:
        """Adverts from `address` (or, with address None, every advert of `family`)."""
        if address is None and family is None:
            raise ValueError("subscribe needs an address or a family")
        sub = Subscription(
            address.upper() if address else None,
            family,
            callback,
            min_interval,
            expected_interval,
            repeat_interval,
        )
        if sub.address:
            self._subs.setdefault(sub.address, []).append(sub)
        else:
            self._family_subs.append(sub)
        self.subscribed(sub)
        return sub

    def subscribed(self, sub: Subscription) -> None:
        """Hook: a subscription was added (a source starts feeding here)."""

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.address:
            lst = self._subs.get(sub.address, [])
            if sub in lst:
                lst.remove(sub)
            if not lst:
                self._subs.pop(sub.address, None)
        elif sub in self._family_subs:
            self._family_subs.remove(sub)

    def dispatch(self, adv: Advert, now: float) -> None:
        """Offer `adv` (its address upper case) to the subscriptions it is for."""
        subs = self._subs.get(adv.address.upper(), [])
        if self._family_subs:
            from drivers.ble.decoders import identify

            fam = identify(adv)
            subs = subs + [s for s in self._family_subs if s.family == fam]
        if not subs:
            return
        payload = (
            tuple(sorted(adv.manufacturer_data.items())),
            tuple(sorted(adv.service_data.items())),
        )
        for sub in subs:
            sub.offer(adv, payload, now)
