"""Shared fixtures: a real Mosquitto broker, pty devices, and a guard against leaked tasks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.family import DriverEntry, DriverFamily
from drivers.registry import registry
from tests.support.broker import Broker
from tests.support.pty import PtyDevice


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            item.add_marker(pytest.mark.usefixtures("_no_leaked_tasks"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CLIs the tests start keep their cache (`--help`'s driver list) out of the user's home."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
async def _no_leaked_tasks() -> object:
    """Fail an async test that leaves tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    for _ in range(5):
        await asyncio.sleep(0)
    me = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]
    for t in leaked:
        t.cancel()
    if leaked:
        pytest.fail(f"test leaked {len(leaked)} task(s): {[t.get_name() + ' ' + repr(t.get_coro()) for t in leaked]}")


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker().start()
    yield b
    b.close()


@pytest.fixture
def pty_factory(tmp_path: Path) -> Iterator[type[PtyDevice]]:
    made: list[PtyDevice] = []

    class Factory(PtyDevice):
        def __init__(self, link: Path | None = None) -> None:
            super().__init__(link)
            made.append(self)

    yield Factory
    for d in made:
        d.close()


@pytest.fixture
def counter_driver() -> Iterator[None]:
    """Registers the test-only `counter` driver (tests/support/crashy.py) for in-process agents."""
    registry().add(DriverFamily("counter", "test counter", (DriverEntry("counter", "tests.support.crashy:CounterDriver"),)),
                   dist="tests")
    yield
    registry().remove("counter")
