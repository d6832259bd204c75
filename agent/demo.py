"""`edge-agent demo`: simulated devices on pseudo-terminals -> agent -> local Mosquitto -> live view.

No hardware needed. Each simulated device writes real wire bytes into a pty that the agent
opens with its real serial driver; a platform-side subscriber prints what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.mosquitto import LocalBroker, free_port, mosquitto_path


@dataclass(frozen=True, slots=True)
class DemoDevice:
    """A simulated serial device: `frames()` yields the bytes to write every `interval` seconds."""

    id: str
    driver: str
    frames: Callable[[], Iterator[bytes]]
    interval: float
    baud: int = 9600
    tags: str = ""


def demo_devices() -> list[DemoDevice]:
    """Every simulator this build has, as a pty-backed device."""
    from drivers.nmea.simulator import epoch_bytes, fixes

    devs = [DemoDevice("van-3-gnss", "nmea", lambda: (epoch_bytes(f) for f in fixes()), 1.0,
                       tags='{ vehicle = "van-3", route = "helsingborg-loop" }')]
    for family, dev_id, room, interval in (("pms5003", "a101-pm", "A101", 2.0),
                                           ("sds011", "a102-pm", "A102", 2.0)):
        try:
            mod = __import__(f"drivers.{family}.simulator", fromlist=["stream"])
        except ImportError:
            continue
        if hasattr(mod, "stream"):
            devs.append(DemoDevice(dev_id, family, mod.stream, interval, tags=f'{{ room = "{room}" }}'))
    return devs


class _Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def _config(workdir: Path, port: int, devices: list[tuple[DemoDevice, str]]) -> Path:
    lines = [
        '[gateway]\nid = "gw-demo"\nhealth_interval = "10s"\n',
        '[buffer]\npath = "buffer.db"\nmax_bytes = "50MB"\ncommit_interval = "200ms"\n',
        f'[uplink]\nhost = "127.0.0.1"\nport = {port}\nbackoff_max = "5s"\n',
        '[control]\nsocket = "control.sock"\n',
    ]
    for dev, path in devices:
        lines.append(
            f'[[devices]]\nid = "{dev.id}"\ndriver = "{dev.driver}"\nport = "{path}"\nbaud = {dev.baud}\n'
            + (f"tags = {dev.tags}\n" if dev.tags else "")
        )
    cfg = workdir / "agent.toml"
    cfg.write_text("\n".join(lines))
    return cfg


async def _feed(fd: int, dev: DemoDevice, stop: asyncio.Event) -> None:
    frames = dev.frames()
    while not stop.is_set():
        try:
            os.write(fd, next(frames))
        except OSError:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), dev.interval)


def _fmt_values(values: dict[str, object]) -> str:
    keys = [k for k in values if k not in ("gnss_time",)]
    return " ".join(f"{k}={values[k]}" for k in keys[:7])


async def _watch(port: int, prefix: str, as_json: bool, stop: asyncio.Event, counts: dict[str, int]) -> None:
    import aiomqtt

    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="edge-agent-demo-platform") as c:
                await c.subscribe(f"{prefix}/#", qos=1)
                async for msg in c.messages:
                    topic = str(msg.topic)
                    body = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    kind = topic.rsplit("/", 1)[-1]
                    counts[kind] = counts.get(kind, 0) + 1
                    if as_json:
                        print(json.dumps({"topic": topic, "payload": body}), flush=True)
                    elif kind == "telemetry":
                        for r in body["readings"]:
                            counts["readings"] = counts.get("readings", 0) + 1
                            print(f"platform <- seq {r['seq']:>5}  {r['device']:<11} {r['ts'][11:23]}  "
                                  f"{_fmt_values(r['values'])}", flush=True)
                    elif kind == "status":
                        print(f"platform <- status: {body['state']} (gateway {body.get('gateway')})", flush=True)
                    elif kind == "events":
                        print(f"platform <- event: {json.dumps(body)}", flush=True)
                    elif kind == "health":
                        b = body["buffer"]
                        print(f"platform <- health: buffer depth {b['depth']}, uplink {body['uplink']['state']}, "
                              f"rss {body['process']['rss_bytes'] // 1_000_000} MB", flush=True)
        except aiomqtt.MqttError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def _demo(seconds: float | None, workdir: Path, as_json: bool) -> int:
    from agent.config import load_config
    from agent.logs import setup_logging
    from agent.runtime import Agent, install_signal_handlers

    broker: LocalBroker | None = None
    if mosquitto_path() is not None:
        broker = LocalBroker(workdir=workdir / "mosquitto").start()
        port = broker.port
        print(f"demo: local Mosquitto on 127.0.0.1:{port}", file=sys.stderr)
    else:
        port = free_port()
        print("demo: mosquitto not found: the agent will keep buffering to SQLite.\n"
              "      Install a broker to see data leave: sudo apt-get install mosquitto", file=sys.stderr)
    ptys: list[_Pty] = []
    devices = demo_devices()
    pairs = []
    for d in devices:
        p = _Pty()
        ptys.append(p)
        pairs.append((d, p.path))
    cfg = load_config(_config(workdir, port, pairs))
    setup_logging("warning")
    print(f"demo: working folder {workdir} (config agent.toml, buffer buffer.db)", file=sys.stderr)
    for d, path in pairs:
        print(f"demo: simulated {d.driver} device {d.id!r} on {path}", file=sys.stderr)
    agent = Agent(cfg)
    install_signal_handlers(agent)
    stop = asyncio.Event()
    counts: dict[str, int] = {}
    await agent.start()
    tasks = [asyncio.create_task(_feed(p.master, d, stop)) for p, (d, _) in zip(ptys, pairs, strict=True)]
    if broker is not None:
        tasks.append(asyncio.create_task(_watch(port, cfg.topic_prefix, as_json, stop, counts)))
    t0 = time.monotonic()
    try:
        if seconds is None:
            await agent.stop_event.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.stop_event.wait(), seconds)
    finally:
        stop.set()
        await agent.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in ptys:
            p.close()
        if broker is not None:
            broker.stop()
    print(f"demo: {counts.get('readings', 0)} readings reached the platform in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0 if broker is None or counts.get("readings", 0) > 0 else 1


def run_demo(seconds: float | None = None, workdir: str | None = None, as_json: bool = False) -> int:
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="edge-agent-demo-")
        wd = Path(tmp)
    else:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(seconds, wd.resolve(), as_json))
    except KeyboardInterrupt:
        return 0
    finally:
        if tmp is not None and os.environ.get("EDGE_AGENT_DEMO_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
