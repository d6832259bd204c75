"""Every product exception sits under the one root, `EdgeAgentError` (private control-flow ones aside)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import agent
import drivers
import edge_common
from edge_common.errors import BufferError_, DriverError, EdgeAgentError, OutboxError


def test_every_public_exception_is_under_the_root() -> None:
    outside = []
    for pkg in (agent, drivers, edge_common):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if m.name.endswith("__main__"):
                continue
            mod = importlib.import_module(m.name)
            for name, cls in vars(mod).items():
                if (inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == mod.__name__
                        and not name.startswith("_") and not issubclass(cls, EdgeAgentError)):
                    outside.append(f"{mod.__name__}.{name}")
    assert outside == []


def test_former_outsiders_keep_their_old_bases() -> None:
    from agent.cli.common import CliExit
    from agent.control import RequestError
    from drivers.modbus.protocol import ModbusReplyError

    assert issubclass(ModbusReplyError, DriverError) and issubclass(ModbusReplyError, ValueError)
    assert issubclass(CliExit, EdgeAgentError) and issubclass(RequestError, EdgeAgentError)
    assert BufferError_ is OutboxError  # the old name still imports
