"""The control socket: permissions, stale sockets, protocol errors, and clients that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.control import MAX_LINE, ControlServer
from agent.errors import ControlError
from agent.model import Reading
from agent.runtime import Agent
from drivers.nmea.simulator import epoch_bytes, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker
from tests.support.cli import run_cli
from tests.support.mqtt import Subscriber, wait_until
from tests.support.pty import PtyDevice


@contextlib.asynccontextmanager
async def agent_in_process(
    tmp_path: Path, broker_port: int, extra: str = ""
) -> AsyncIterator[Agent]:
    cfg = load_config(write_config(tmp_path / "agent.toml", broker_port=broker_port, extra=extra))
    agent = Agent(cfg)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
) -> dict[str, object]:
    writer.write(line)
    await writer.drain()
    return json.loads(await asyncio.wait_for(reader.readline(), 10))  # type: ignore[no-any-return]


async def test_socket_mode_group_stale_file_and_single_agent(
    tmp_path: Path, broker: Broker
) -> None:
    sock_path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))  # left behind by a killed agent
    stale.close()
    group = grp.getgrgid(os.getgid()).gr_name
    async with agent_in_process(tmp_path, broker.port, f'group = "{group}"\nmode = 0o640') as agent:
        st = sock_path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_gid == grp.getgrnam(group).gr_gid
        leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".control")]
        assert leftovers == []  # no temp files left behind
        # A second agent on the same socket refuses to start (it would share the buffer).
        with pytest.raises(ControlError, match="another agent is already running"):
            await ControlServer(agent).start()
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        resp = await request(reader, writer, b'{"id": 7, "cmd": "ping"}\n')
        assert resp == {
            "id": 7,
            "ok": True,
            "result": {
                "version": resp["result"]["version"],  # type: ignore[index]
                "pid": os.getpid(),
                "gateway": "gw-test",
            },
        }
        writer.close()
        await writer.wait_closed()
    assert not sock_path.exists()  # removed on stop


async def test_default_mode_is_0660(tmp_path: Path, broker: Broker) -> None:
    async with agent_in_process(tmp_path, broker.port):
        assert stat.S_IMODE((tmp_path / "control.sock").stat().st_mode) == 0o660


async def test_a_non_socket_file_in_the_way_is_reported(tmp_path: Path, broker: Broker) -> None:
    (tmp_path / "control.sock").write_text("not a socket")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        async with agent_in_process(tmp_path, broker.port):
            pass
    assert (tmp_path / "control.sock").read_text() == "not a socket"  # never deleted


async def test_protocol_errors_are_answered_and_the_connection_survives(
    tmp_path: Path, broker: Broker
) -> None:
    async with agent_in_process(tmp_path, broker.port):
        reader, writer = await asyncio.open_unix_connection(
            str(tmp_path / "control.sock"), limit=1 << 20
        )
        r = await request(reader, writer, b"\x00\xffgarbage{{\n")
        assert r["ok"] is False and r["error"]["code"] == "bad_json"  # type: ignore[index]
        r = await request(reader, writer, b"[1, 2]\n")
        assert r["error"]["code"] == "bad_request"  # type: ignore[index]
        r = await request(reader, writer, b'{"id": "x", "cmd": "reboot"}\n')
        assert r == {
            "id": "x",
            "ok": False,
            "error": {
                "code": "unknown_command",
                "message": "unknown command 'reboot' (known: ping, status, devices, tail, uplink.reconnect)",
            },
        }
        r = await request(reader, writer, b'{"id": 1, "cmd": "tail", "device": "nope"}\n')
        assert r["error"]["code"] == "unknown_device"  # type: ignore[index]
        r = await request(reader, writer, b'{"id": 2, "cmd": "tail", "queue": 0}\n')
        assert r["error"]["code"] == "bad_request"  # type: ignore[index]
        r = await request(reader, writer, b'{"id": 3, "cmd": "status"}\n')
        assert r["ok"] is True and r["result"]["control"]["bad_requests"] == 5  # type: ignore[index]
        # An endless line is cut off: one error, then the agent hangs up.
        r = await request(reader, writer, b"x" * (MAX_LINE + 10) + b"\n")
        assert r["error"]["code"] == "line_too_long"  # type: ignore[index]
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await writer.wait_closed()


async def test_slow_tail_client_loses_readings_counted_never_blocks(
    tmp_path: Path, broker: Broker
) -> None:
    """A subscriber that stops reading gets drop notices that account for every reading exactly."""
    total = 3000
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/telemetry")
    try:
        async with agent_in_process(tmp_path, broker.port) as agent:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(str(tmp_path / "control.sock"))
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
            r = await request(reader, writer, b'{"id": 1, "cmd": "tail", "queue": 20}\n')
            assert r["result"] == {"subscribed": True, "device": None, "queue": 20}
            blob = "x" * 2000  # big readings fill the socket buffers quickly
            for i in range(total):
                agent.pipeline.submit(Reading("dev-a", "sim", {"i": i, "blob": blob}))
                if i % 500 == 499:
                    await agent.pipeline.flush()
            await agent.pipeline.flush()
            assert agent.pipeline.accepted == total  # ingestion never waited for the client
            got: list[int] = []
            dropped: list[tuple[int, int]] = []  # (position in stream, count)
            while len(got) + sum(c for _, c in dropped) < total:
                ev = json.loads(await asyncio.wait_for(reader.readline(), 20))
                if ev["event"] == "dropped":
                    dropped.append((len(got), ev["count"]))
                else:
                    assert ev["reading"]["values"]["i"] == ev["seq"] - 1
                    got.append(ev["seq"])
            assert dropped, "the stuck client should have lost readings"
            # Readings arrive in order; every hole is announced at its place with its exact size.
            expect, di = 1, 0
            for pos, seq in enumerate(got):
                while di < len(dropped) and dropped[di][0] == pos:
                    expect += dropped[di][1]
                    di += 1
                assert seq == expect
                expect += 1
            assert expect + sum(c for p, c in dropped if p == len(got)) == total + 1
            st = await agent.control.status()
            assert st["control"]["tail_dropped"] == sum(c for _, c in dropped)
            wait = asyncio.get_running_loop().run_in_executor(
                None,
                lambda: sub.wait_for(lambda: len(sub.readings()) >= total, 60, "all at broker"),
            )
            await wait
            writer.close()
            await writer.wait_closed()
        seqs = [r["seq"] for r in sub.readings()]
        assert sorted(set(seqs)) == list(range(1, total + 1))
    finally:
        sub.close()


def test_misbehaving_clients_do_not_disturb_ingestion(
    tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice]
) -> None:
    dev = pty_factory()
    cfg = write_config(
        tmp_path / "agent.toml",
        broker_port=broker.port,
        devices=nmea_device(dev.port, tags="", expected_interval=""),
    )
    sub = Subscriber(broker.host, broker.port, "edge/gw-test/telemetry")
    agent = AgentProcess(cfg).start_and_wait_port()
    path = str(tmp_path / "control.sock")
    clients: list[socket.socket] = []

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(path)
        s.settimeout(10)
        clients.append(s)
        return s

    try:
        stuck = connect()  # subscribes, then never reads
        stuck.sendall(b'{"id": 1, "cmd": "tail", "queue": 10}\n')
        mute = connect()  # asks for status over and over, never reads the answers
        mute.sendall(b'{"id": 1, "cmd": "status"}\n' * 50)
        half = connect()  # half a request, then nothing
        half.sendall(b'{"id": 1, "cmd": "sta')
        garbage = connect()
        garbage.sendall(os.urandom(3000).replace(b"\n", b"") + b"\n" + b"\xff" * (MAX_LINE + 1))
        gone = connect()  # disconnects in the middle of its request
        gone.sendall(b'{"id": 1, "cm')
        gone.close()
        total = 1500
        for f in itertools.islice(fixes(start=1_790_000_000.0), total):
            dev.write(epoch_bytes(f))
        sub.wait_for(lambda: len(sub.readings()) >= total, 60, f"{total} readings at the broker")
        seqs = [r["seq"] for r in sub.readings()]
        assert seqs == list(range(1, total + 1))  # exact: none lost, none duplicated, in order
        r = run_cli("status", "--config", cfg, "--json")
        assert r.code in (0, 3) and r.json()["buffer"]["next_seq"] == total + 1  # 3: clock unsynced here
        # The stuck subscriber, reading at last, is told exactly what it missed.
        buf, got, dropped = b"", 0, 0
        stuck.settimeout(10)
        first = True
        while got + dropped < total:
            while b"\n" not in buf:
                chunk = stuck.recv(65536)
                assert chunk, "agent closed the stuck subscriber"
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            ev = json.loads(line)
            if first:
                assert ev["ok"] is True
                first = False
            elif ev["event"] == "dropped":
                dropped += ev["count"]
            else:
                got += 1
        assert dropped > 0 and got + dropped == total
        assert agent.terminate() == 0
    finally:
        for s in clients:
            s.close()
        agent.close()
        sub.close()
    wait_until(lambda: not Path(path).exists(), 5, "socket removed on exit")


def test_a_second_agent_on_the_same_socket_refuses_to_start(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port)
    first = AgentProcess(cfg).start()
    second = AgentProcess(cfg.with_name("agent.toml"))
    second.log = tmp_path / "second.log"
    try:
        first.wait_log("control socket")
        # The socket answers before the agent is ready (status says "starting" until then).
        wait_until(lambda: run_cli("status", "--config", cfg, "--json").code in (0, 3, 4), 20, "first agent ready")
        second.start()
        assert second.wait(20) == 1
        assert "another agent is already running" in second.output()
        assert "Traceback" not in second.output()
        assert run_cli("status", "--config", cfg, "--json").json()["pid"] == first.proc.pid  # type: ignore[union-attr]
        assert first.terminate() == 0
    finally:
        first.close()
        second.close()
