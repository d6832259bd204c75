"""`edge-agent demo`: simulated devices on pseudo-terminals -> agent -> local Mosquitto -> live view.

No hardware needed. Each simulated device writes real wire bytes into a pty that the agent
opens with its real serial driver; a platform-side subscriber prints what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from typing import TYPE_CHECKING, Any

from agent.mosquitto import LocalBroker, free_port, mosquitto_path
from agent.states import DeviceState

if TYPE_CHECKING:
    from agent.config import AgentConfig


@dataclass(frozen=True, slots=True)
class DemoDevice:
    """A simulated device: a pty fed with `frames()` every `interval` s, or a `sim` device (frames None)."""

    id: str
    driver: str
    frames: Callable[[], Iterator[bytes]] | None
    interval: float
    extra: str = ""  # more TOML keys of the device


def demo_devices() -> list[DemoDevice]:
    """A delivery van, a cargo bike (the vehicle profile) and two classrooms, then one device of every other
    driver the registry can simulate."""
    from drivers.lines import simulator as ls
    from drivers.nmea.simulator import epoch_bytes, fixes
    from drivers.pms5003 import simulator as pms
    from drivers.sds011 import simulator as sds

    board_fields = ", ".join(f'{k} = {{ quantity = "{v["quantity"]}" }}' for k, v in ls.FIELDS.items())
    scene = [
        DemoDevice("van-3-gnss", "nmea", lambda: (epoch_bytes(f) for f in fixes()), 1.0,
                   'tags = { vehicle = "van-3" }'),
        # the vehicle profile: one cargo bike's GNSS, motor controller, battery and CAN bus moving together
        *(DemoDevice(f"cargo-1-{part}", "sim", None, 1.0,
                     f'family = "{family}"\nvehicle = "cargo-1"\ninterval = "{interval}"\n'
                     'tags = { vehicle = "cargo-1" }')
          for part, family, interval in (("gnss", "nmea", "1s"), ("motor", "vesc", "1s"),
                                         ("battery", "jbd_bms", "2s"), ("bus", "can", "2s"))),
        DemoDevice("a101-pm", "pms5003", lambda: (pms.frame_bytes(x) for x in pms.samples()), 2.0,
                   'tags = { room = "A101" }'),
        DemoDevice("a102-pm", "sds011", lambda: (sds.frame_bytes(x) for x in sds.samples()), 2.0,
                   'tags = { room = "A102" }'),
        DemoDevice("a102-board", "lines", lambda: (ls.line_bytes(x, "json") for x in ls.samples()), 3.0,
                   f'format = "json"\nfields = {{ {board_fields} }}\ntags = {{ room = "A102" }}'),
        DemoDevice("a101-co2", "sim", None, 3.0, 'family = "senseair_s8"\ninterval = "3s"\ntags = { room = "A101" }'),
        DemoDevice("a101-ruuvi", "sim", None, 4.0,
                   'family = "ruuvi"\ninterval = "4s"\naddress = "C7:F5:2A:A1:B2:C3"\ntags = { room = "A101" }'),
        DemoDevice("a102-aranet", "sim", None, 5.0,
                   'family = "aranet4"\ninterval = "5s"\naddress = "D1:23:45:67:89:AB"\ntags = { room = "A102" }'),
    ]
    return scene + _more_devices({d.driver for d in scene} | {_sim_family(d) for d in scene})


def _sim_family(d: DemoDevice) -> str:
    return d.extra.split('family = "', 1)[1].split('"', 1)[0] if 'family = "' in d.extra else d.driver


def _toml_value(v: object) -> str:
    """An inline TOML value (the simulators' device keys: strings, numbers, booleans, tables, arrays)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)  # a JSON string or number is a TOML one


def _more_devices(covered: set[str]) -> list[DemoDevice]:
    """Registered drivers the scene leaves out: on a pty when the driver only listens, else a `sim` device."""
    from drivers.family import resolve
    from drivers.polled import PolledDriver
    from drivers.registry import registry
    from drivers.stream import StreamDriver

    out: list[DemoDevice] = []
    reg = registry()
    for n, name in enumerate(d for d in reg.simulated() if d not in covered):
        entry, fam = reg.drivers[name].entry, reg.family_of(name)
        dev_id = "demo-" + name.replace("_", "-")
        try:
            cls = fam.driver_class(name)
        except ImportError:
            continue  # config check would name it; the demo shows what loads
        if issubclass(cls, StreamDriver) and not issubclass(cls, PolledDriver):
            keys = {**(resolve(entry.sim_device) if entry.sim_device else {})}
            extra = "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items()) + 'tags = { room = "lab" }'
            out.append(DemoDevice(dev_id, name, functools.partial(fam_chunks, name), 3.0, extra))
        else:
            extra = f'family = "{name}"\ninterval = "3s"\n'
            if fam.advert_decoder:  # a simulated tag has an address
                extra += f'address = "D2:00:00:00:00:{n:02X}"\n'
            out.append(DemoDevice(dev_id, "sim", None, 3.0, extra + 'tags = { room = "lab" }'))
    return out


def fam_chunks(driver: str) -> Iterator[bytes]:
    """The wire bytes of a driver's simulator."""
    from drivers.family import SimParams
    from drivers.registry import registry

    chunks, _ = registry().family_of(driver).simulation(driver, SimParams())
    return chunks


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


def _config(workdir: Path, port: int, devices: list[tuple[DemoDevice, str | None]]) -> Path:
    lines = [
        '[gateway]\nid = "gw-demo"\nhealth_interval = "10s"\n',
        '[buffer]\npath = "buffer.db"\nmax_bytes = "50MB"\ncommit_interval = "200ms"\n',
        f'[uplink]\nhost = "127.0.0.1"\nport = {port}\nbackoff_max = "5s"\n',
        '[control]\nsocket = "control.sock"\n',
    ]
    for dev, path in devices:
        lines.append(
            f'[[devices]]\nid = "{dev.id}"\ndriver = "{dev.driver}"\n'
            + (f'port = "{path}"\n' if path else "")
            + (dev.extra + "\n" if dev.extra else "")
        )
    cfg = workdir / "agent.toml"
    cfg.write_text("\n".join(lines))
    return cfg


async def _feed(fd: int, dev: DemoDevice, stop: asyncio.Event) -> None:
    assert dev.frames is not None
    frames = dev.frames()
    while not stop.is_set():
        try:
            os.write(fd, next(frames))
        except OSError:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), dev.interval)


def _fmt_values(values: dict[str, object], limit: int = 200) -> str:
    from agent.fmt import values_text

    keys = [k for k in values if k not in ("gnss_time", "packet_id", "measurement_sequence", "interval", "age")]
    return values_text({k: values[k] for k in keys[:7]}, max(20, limit))


def _fmt_reading(r: dict[str, Any], id_width: int, cols: int) -> str:
    """`platform <- seq    12  van-3-gnss   07:49:54.480  latitude=...`: columns as wide as the longest id."""
    head = f"platform <- seq {r['seq']:>5}  {r['device']:<{id_width}} {r['ts'][11:23]}  "
    return head + _fmt_values(r["values"], cols - len(head))


def _fmt_event(body: dict[str, object]) -> str:
    """`device a101-co2 offline (link disconnected)`, `gap seq 1..5 (buffer_full)`: one short line."""
    kind = body.get("type", "event")
    if kind == "device":
        link = f" (link {body.get('link')})" if body.get("link") not in (None, "connected") else ""
        return f"device {body.get('device')} {body.get('state')}{link}"
    if kind == "gap":
        return f"gap seq {body.get('from_seq')}..{body.get('to_seq')} ({body.get('reason')})"
    rest = {k: v for k, v in body.items() if k not in ("v", "type", "gateway", "ts", "epoch")}
    return f"{kind} " + " ".join(f"{k}={v}" for k, v in rest.items())


def cli_command() -> str:
    """How this user runs `edge-agent` from another terminal (it may not be on PATH)."""
    here = Path(sys.executable).parent / "edge-agent"
    found = shutil.which("edge-agent")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "edge-agent"
    return str(here) if here.exists() else f"{sys.executable} -m agent"


def write_pointer(config: Path) -> Path:
    """Name the demo's config where this user's `edge-agent` looks when it has none (docs/CLI.md)."""
    from agent.paths import demo_pointer

    ptr = demo_pointer()
    tmp = ptr.with_name(f".{ptr.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"config": str(config), "pid": os.getpid()}), encoding="utf-8")
    os.replace(tmp, ptr)
    return ptr


def _cli_config(cfg: AgentConfig, workdir: Path) -> Path:
    """A config the CLI can read for a `--config` demo (its real one lives in memory only)."""
    path = workdir / "cli.toml"
    path.write_text(f'[gateway]\nid = "{cfg.gateway.id}"\n[buffer]\npath = "{cfg.buffer.path}"\n'
                    f'[uplink]\nhost = "127.0.0.1"\nport = {cfg.uplink.port}\n'
                    f'[control]\nsocket = "{cfg.control.socket}"\n', encoding="utf-8")
    return path


async def _watch(port: int, prefix: str, as_json: bool, stop: asyncio.Event, counts: dict[str, int],
                 subscribed: asyncio.Event, offline: asyncio.Event, id_width: int = 12) -> None:
    import aiomqtt

    from agent.fmt import width

    cols = width()
    last_state = None
    online = False
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="edge-agent-demo-platform") as c:
                await c.subscribe(f"{prefix}/#", qos=1)
                subscribed.set()
                async for msg in c.messages:
                    topic = str(msg.topic)
                    body = json.loads(bytes(msg.payload))  # type: ignore[arg-type,unused-ignore]
                    kind = topic.rsplit("/", 1)[-1]
                    counts[kind] = counts.get(kind, 0) + 1
                    if kind == "telemetry":
                        counts["readings"] = counts.get("readings", 0) + len(body["readings"])
                    if kind == "status" and body["state"] == DeviceState.OFFLINE and online:
                        offline.set()  # this run's goodbye (not a retained one from before)
                    online = online or (kind == "status" and body["state"] == DeviceState.ONLINE)
                    if as_json:
                        print(json.dumps({"topic": topic, "payload": body}), flush=True)
                    elif kind == "telemetry":
                        for r in body["readings"]:
                            print(_fmt_reading(r, id_width, cols), flush=True)
                    elif kind == "status":
                        if body["state"] != last_state:  # a retained copy after a reconnect is no news
                            print(f"platform <- status: {body['state']} (gateway {body.get('gateway')})", flush=True)
                        last_state = body["state"]
                    elif kind == "events":
                        print(f"platform <- event: {_fmt_event(body)}", flush=True)
                    elif kind == "health":
                        b = body["buffer"]
                        print(f"platform <- health: buffer depth {b['depth']}, uplink {body['uplink']['state']}, "
                              f"rss {body['process']['rss_bytes'] // 1_000_000} MB", flush=True)
        except aiomqtt.MqttError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def _remind(hint: str, counts: dict[str, int], stop: asyncio.Event, every: float = 15.0) -> None:
    """The header scrolls away in a second: say again, every few seconds, how to look inside."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if not stop.is_set():
            print(f"demo: {counts.get('readings', 0)} readings at the platform so far; {hint[6:]}",
                  file=sys.stderr, flush=True)


def _own_config(user: AgentConfig, workdir: Path, port: int) -> AgentConfig:
    """`user`'s gateway and devices, with the demo's broker and state kept in the working folder."""
    up = user.uplink.model_copy(update={"host": "127.0.0.1", "port": port, "tls": None, "username": None,
                                        "password_file": None})
    return user.model_copy(update={
        "buffer": user.buffer.model_copy(update={"path": workdir / "buffer.db"}),
        "uplink": up,
        "control": user.control.model_copy(update={"socket": workdir / "control.sock", "group": None}),
    })


async def _demo(seconds: float | None, workdir: Path, as_json: bool, user: AgentConfig | None = None,
                broker_port: int | None = None) -> int:
    from agent.config import load_config
    from agent.logs import setup_logging
    from agent.runtime import Agent, install_signal_handlers

    broker: LocalBroker | None = None
    if broker_port is not None:  # someone else's broker (e.g. the platform's ingest is subscribed there)
        port = broker_port
        print(f"demo: using the MQTT broker on 127.0.0.1:{port}", file=sys.stderr)
    elif mosquitto_path() is not None:
        broker = LocalBroker(workdir=workdir / "mosquitto").start()
        port = broker.port
        print(f"demo: local Mosquitto on 127.0.0.1:{port}", file=sys.stderr)
    else:
        port = free_port()
        print("demo: mosquitto not found: the agent will keep buffering to SQLite.\n"
              "      Install a broker to see data leave: sudo apt-get install mosquitto", file=sys.stderr)
    ptys: list[tuple[_Pty, DemoDevice]] = []
    pairs: list[tuple[DemoDevice, str | None]] = []
    for d in demo_devices() if user is None else []:
        if d.frames is None:
            pairs.append((d, None))
            continue
        p = _Pty()
        ptys.append((p, d))
        pairs.append((d, p.path))
    cfg = load_config(_config(workdir, port, pairs)) if user is None else _own_config(user, workdir, port)
    setup_logging("warning")
    if user is None:
        print(f"demo: working folder {workdir} (config agent.toml, buffer buffer.db)", file=sys.stderr)
    else:
        print(f"demo: devices of {user.source_path}; buffer and control socket in {workdir}", file=sys.stderr)
    for d, path in pairs:
        where = f"on {path}" if path else "(in-process simulator)"
        print(f"demo: simulated {d.driver} device {d.id!r} {where}", file=sys.stderr)
    for dev in cfg.devices if user is not None else []:
        print(f"demo: {dev.driver} device {dev.id!r}" + (f" on {dev.port}" if dev.port else ""), file=sys.stderr)
    agent = Agent(cfg)
    install_signal_handlers(agent)
    stop = asyncio.Event()
    counts: dict[str, int] = {}
    offline = asyncio.Event()  # the platform view has shown the agent's goodbye
    tasks: list[asyncio.Task[None]] = []
    if broker is not None or broker_port is not None:
        # The platform view subscribes first: it shows every reading from seq 1 on.
        subscribed = asyncio.Event()
        id_width = max([12, *(len(d.id) for d in cfg.devices)])
        tasks.append(asyncio.create_task(_watch(port, cfg.topic_prefix, as_json, stop, counts, subscribed,
                                                offline, id_width)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 10)
    await agent.start()
    tasks += [asyncio.create_task(_feed(p.master, d, stop)) for p, d in ptys]
    pointer = write_pointer(cfg.source_path if user is None and cfg.source_path else _cli_config(cfg, workdir))
    hint = f"demo: in another terminal: {cli_command()} status   (also: devices, tail, doctor; Ctrl-C stops)"
    print(hint, file=sys.stderr, flush=True)
    if not as_json:
        tasks.append(asyncio.create_task(_remind(hint, counts, stop)))
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
        if counts.get("status"):  # the view saw the birth: let it show (or print) the offline status too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(offline.wait(), 2.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p, _ in ptys:
            p.close()
        if broker is not None:
            broker.stop()
        with contextlib.suppress(OSError):
            pointer.unlink()
    print(f"demo: {counts.get('readings', 0)} readings reached the platform in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0 if (broker is None and broker_port is None) or counts.get("readings", 0) > 0 else 1


def run_demo(seconds: float | None = None, workdir: str | None = None, as_json: bool = False,
             config: str | None = None, broker_port: int | None = None) -> int:
    """The demo; with `config`, that file's gateway and devices instead of the built-in ones."""
    from agent.config import load_config

    # ConfigError (exit 78) before anything starts; the uplink and its files are replaced anyway.
    user = load_config(config, check_files=False) if config is not None else None
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="edge-agent-demo-")
        wd = Path(tmp)
    else:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(seconds, wd.resolve(), as_json, user, broker_port))
    except KeyboardInterrupt:
        return 0
    finally:
        if tmp is not None and os.environ.get("EDGE_AGENT_DEMO_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
