"""Issue 14, the technician's screen: 80 columns, exit codes, JSON errors, tail liveness, clean stops."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import doctor
from agent.cli.doctor import Check, render_checks
from agent.cli.status import render_devices, render_status, status_code
from agent.config import load_config
from drivers.nmea.simulator import epoch_bytes, fixes
from tests.support.agentproc import AgentProcess, nmea_device, write_config
from tests.support.broker import Broker, free_port
from tests.support.cli import Spawned, run_cli
from tests.support.pty import PtyDevice
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]

STATUS = {
    "v": 1, "gateway": "gw-parken-01", "ts": "2026-11-27T07:49:52.540Z", "version": "0.1.0",
    "uptime": 16.2, "started": "2026-11-27T07:49:36.286Z", "pid": 26199, "clock": "synced",
    "buffer": {"epoch": "04e7d43a18a949a6", "depth": 40, "bytes": 14012, "max_bytes": 256000000,
               "oldest_age": 3.8, "time_to_full": 264000.0, "next_seq": 46, "dropped": {}, "rejected": 0,
               "queue_overflow": 0, "queued": 0, "file_bytes": 111248, "accept_rate": 2.78, "writer": "ok"},
    "uplink": {"state": "backoff", "connected_since": None, "last_error": "[Errno 111] Connection refused",
               "published": 3, "acked": 2, "readings_acked": 5, "reconnects": 0,
               "last_puback": "2026-11-27T07:49:36.500Z", "inflight": 0,
               "backoff_until": "2026-11-27T07:50:40.640Z", "broker": "mqtt.city.example:8883", "tls": True},
    "devices": {"van-gnss": {"online": True, "link": "connected", "readings": 45, "errors": 0, "state": "online"},
                "bus-gnss": {"online": False, "link": "disconnected", "readings": 0, "errors": 0,
                             "state": "offline"}},
    "drivers": {"nmea": {"devices": 2, "online": 1, "offline": 1, "starting": 0, "disabled": 0, "readings": 45,
                         "errors": 0}},
}

STATUS_80 = """\
gw-parken-01  edge-agent 0.1.0  pid 26199  up 16.2s since 2026-11-27T07:49:36Z
clock     synced
uplink    BACKOFF  broker mqtt.city.example:8883: connection refused
          retry in 48.1s at 07:50:40Z, or now: `edge-agent uplink reconnect`
          last PUBACK 16.0s ago; 5 readings acked, 0 reconnects, 0 in flight
buffer    40 readings waiting, 14.0 kB of 256.0 MB (0.0%), oldest 3.8s
          accepting 2.78/s, full in 3d 01h; next seq 46, epoch 04e7d43a18a949a6
drops     none
drivers   nmea         1/2 online, 1 offline, 45 readings, 0 errors
! DATA IS BUFFERING: uplink to mqtt.city.example:8883 down; 40 readings kept,
  sent when it reconnects. Why: `edge-agent doctor`; carry out:
  `edge-agent buffer export`
! 1 device(s) not delivering: bus-gnss (link disconnected); see
  `edge-agent devices`"""

PORT_ERROR = ("cannot open /dev/serial/by-id/usb-u-blox_GNSS_receiver-if00: [Errno 2] could not open port "
              "/dev/serial/by-id/usb-u-blox_GNSS_receiver-if00: [Errno 2] No such file or directory: "
              "'/dev/serial/by-id/usb-u-blox_GNSS_receiver-if00'")


def fits(text: str, cols: int = 80) -> bool:
    """Every line within `cols`, but for a line holding one word too long for any line (a test's tmp path)."""
    return all(len(line) <= cols or max(map(len, line.split())) > cols - 20 for line in text.splitlines())


def row(dev_id: str, driver: str, state: str, link: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": dev_id, "driver": driver, "state": state, "online": state == "online", "link": link,
        "link_detail": "", "readings": 0, "last_reading_age": None, "rate": 0.0, "errors": {}, "restarts": 0,
        "last_error": "", "last_values": {}, "expected_interval": 10.0, "port": None, "address": None}
    return {**base, **kw}


ROWS = [
    row("van-gnss", "nmea", "online", "connected", readings=45, last_reading_age=0.4, rate=2.8,
        errors={"checksum": 1}, port="/dev/ttyUSB0",
        last_values={"latitude": 56.0433575, "longitude": 12.694511667, "altitude": 12.6, "speed": 8.0,
                     "fix": "gps"}),
    row("bus-gnss", "nmea", "offline", "disconnected", link_detail=PORT_ERROR,
        port="/dev/serial/by-id/usb-u-blox_GNSS_receiver-if00"),
    row("a101-co2", "senseair_s8", "online", "connected", readings=12, last_reading_age=1.2, rate=0.33,
        last_values={"co2": 612}, port="/dev/ttyUSB1"),
]

DEVICES_80 = """\
DEVICE    DRIVER       STATE    LINK          LAST  RATE    ERRORS
van-gnss  nmea         online   connected     0.4s  2.8/s   checksum=1
  latitude=56.0434°, longitude=12.6945°, altitude=12.6 m, speed=8 m/s, fix=gps
bus-gnss  nmea         offline  disconnected  -     0/s     0
a101-co2  senseair_s8  online   connected     1.2s  0.33/s  0
  co2=612 ppm

not delivering:
  bus-gnss: offline, link disconnected
    /dev/serial/by-id/usb-u-blox_GNSS_receiver-if00: cannot open: no such file
    or directory; last reading never (expected every 10s)
  check cabling and power; `edge-agent doctor` checks ports and the Bluetooth
    adapter"""


def test_status_at_80_columns_is_golden() -> None:
    assert render_status(STATUS, 80) == STATUS_80
    assert max(map(len, render_status(STATUS, 80).splitlines())) <= 80


@pytest.mark.parametrize(("change", "code"), [
    ({}, 4),  # the uplink is down: data is buffering
    ({"uplink": {"state": "connected"}}, 3),  # data leaves, but bus-gnss is offline
    ({"uplink": {"state": "connected"}, "devices": {}}, 0),
    ({"uplink": {"state": "connected"}, "devices": {}, "clock": "unsynced"}, 3),
    ({"buffer": {"writer": "disk_full"}}, 5),  # the most severe wins
])
def test_status_exit_code_says_how_degraded(change: dict[str, object], code: int) -> None:
    st: dict[str, object] = json.loads(json.dumps(STATUS))
    for k, v in change.items():
        st[k] = {**st[k], **v} if isinstance(v, dict) and v else v  # type: ignore[dict-item]
    assert status_code(st) == code


def test_devices_at_80_columns_is_golden() -> None:
    assert render_devices(ROWS, 80) == DEVICES_80
    wide = render_devices(ROWS, 160).splitlines()  # room enough: LAST VALUES in the table
    assert wide[0].endswith("ERRORS      LAST VALUES")
    assert wide[1].endswith("latitude=56.0434°, longitude=12.6945°, altitude=12.6 m, speed=8 m/s, fix=gps")


def test_doctor_at_80_columns_dead_device_unreachable_broker_0600_port(
    tmp_path: Path, pty_factory: type[PtyDevice]
) -> None:
    """Real check results (paths normalised) for the three problems a technician meets most."""
    dev = pty_factory()
    link = tmp_path / "ttyCO2"
    link.symlink_to(dev.port)
    port = free_port()  # nothing listens there
    cfg = load_config(write_config(tmp_path / "agent.toml", broker_port=port, devices=(
        nmea_device(str(tmp_path / "usb-u-blox_GNSS_receiver-if00"), "bus-gnss")
        + nmea_device(str(link), "a101-gnss"))))
    st = os.stat(dev.port)
    os.chmod(dev.port, 0o600)
    try:
        checks = [*doctor.check_serial(cfg, ("edge-agent", 54321, {54321})), *doctor.check_broker(cfg, 2.0)]
    finally:
        os.chmod(dev.port, st.st_mode & 0o7777)

    def norm(s: str) -> str:
        return (s.replace(str(tmp_path), "/dev/serial/by-id").replace(dev.port, "/dev/ttyUSB1")
                .replace(f"127.0.0.1:{port}", "127.0.0.1:8883"))

    checks = [Check(c.name, c.verdict, norm(c.detail), norm(c.hint)) for c in checks]
    text = render_checks(checks, Path("/etc/edge-agent/agent.toml"), 80)
    group = __import__("grp").getgrgid(st.st_gid).gr_name
    assert text == textwrap.dedent(f"""\
        edge-agent doctor (/etc/edge-agent/agent.toml)
          FAIL  serial:bus-gnss   /dev/serial/by-id/usb-u-blox_GNSS_receiver-if00 not
                present
                -> plug the adapter in; list candidates with `ls -l /dev/serial/by-id/`
                   or `edge-agent probe serial PORT`
          FAIL  serial:a101-gnss  /dev/serial/by-id/ttyCO2 -> /dev/ttyUSB1 (0600, group
                {group}) is not read/write for edge-agent
                -> no group can help a 0600 port of group {group}: give it group dialout
                   and mode 0660 with a udev rule (systemd/99-edge-agent-serial.rules ->
                   /etc/udev/rules.d/), then replug or `sudo udevadm trigger`
          FAIL  broker            127.0.0.1:8883 unreachable: Connection refused
                -> check network (ping, DNS), [uplink].host/port and the firewall;
                   readings are kept in the buffer meanwhile
        3 failed, 0 warnings""")
    assert "usermod" not in text


# -- a running agent --------------------------------------------------------------------------
@pytest.fixture
def buffering(tmp_path: Path, pty_factory: type[PtyDevice]) -> Iterator[tuple[Path, PtyDevice, Broker]]:
    """An agent whose broker is down, with a long backoff, a live NMEA device and a dead one."""
    dev = pty_factory()
    broker = Broker()  # port chosen, nothing listening yet
    cfg = tmp_path / "agent.toml"
    cfg.write_text(textwrap.dedent(f"""\
        [gateway]
        id = "gw-test"
        [buffer]
        path = "buffer.db"
        commit_interval = "100ms"
        [uplink]
        host = "127.0.0.1"
        port = {broker.port}
        backoff_initial = "60s"
        backoff_max = "60s"
        [control]
        socket = "control.sock"
        """) + nmea_device(dev.port, expected_interval="2s")
        + nmea_device("/dev/serial/by-id/usb-not-plugged-in-if00", "dead-gnss", tags="", expected_interval="1s"))
    agent = AgentProcess(cfg, env={"EDGE_AGENT_CLOCK": "synced"}).start_and_wait_port()
    try:
        yield cfg, dev, broker
    finally:
        agent.close()
        broker.close()
    log = agent.output()
    assert "Traceback" not in log, log[-3000:]


def test_live_screens_fit_80_columns_and_reconnect_now(
    buffering: tuple[Path, PtyDevice, Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, dev, broker = buffering
    monkeypatch.setenv("COLUMNS", "80")
    for f in itertools.islice(fixes(start=1_790_000_000.0), 3):
        dev.write(epoch_bytes(f))
    wait_until(lambda: run_cli("status", "--config", cfg, "--json").json()["buffer"]["depth"] == 3, 20, "3 buffered")
    wait_until(lambda: run_cli("status", "--config", cfg, "--json").json()["devices"]["dead-gnss"]["state"]
               == "offline", 20, "dead-gnss offline")
    st = run_cli("status", "--config", cfg)
    assert st.code == 4, st  # data is buffering
    lines = st.out.splitlines()
    assert fits(st.out), st.out
    assert any(line.startswith("          retry in ") and "`edge-agent uplink reconnect`" in line for line in lines)
    assert "! DATA IS BUFFERING" in st.out
    devs = run_cli("devices", "--config", cfg)
    assert devs.code == 0 and fits(devs.out), devs.out
    notes = " ".join(devs.out.split("not delivering:")[1].split())
    # the port error said once, in words
    assert "cannot open: no such file or directory" in notes and notes.count("usb-not-plugged-in") == 1, notes
    assert "[Errno" not in devs.out
    doc = run_cli("doctor", "--config", cfg, "--timeout", "1")
    assert doc.code == 1 and fits(doc.out), doc.out

    # The broker is back; the agent would wait out its 30-60 s backoff: `uplink reconnect` tries now.
    down = run_cli("uplink", "reconnect", "--config", cfg, "--wait", "10")
    assert down.code == 4 and "still backoff: connection refused" in down.out, down
    broker.start()
    r = run_cli("uplink", "reconnect", "--config", cfg, "--json")
    assert r.code == 0, r
    assert (r.json()["was"], r.json()["reconnecting"], r.json()["state"]) == ("backoff", True, "connected")
    assert run_cli("uplink", "reconnect", "--config", cfg).out.startswith("uplink already connected to 127.0.0.1:")
    wait_until(lambda: run_cli("status", "--config", cfg, "--json").json()["buffer"]["depth"] == 0, 20, "drained")
    assert run_cli("status", "--config", cfg).code == 3  # connected; dead-gnss still offline


def test_tail_says_a_device_is_offline_since_when(buffering: tuple[Path, PtyDevice, Broker]) -> None:
    cfg, dev, _ = buffering
    dead = Spawned("tail", "--config", cfg, "--device", "dead-gnss")
    live = Spawned("tail", "--config", cfg, "--device", "van-gnss", "--json")
    try:
        wait_until(lambda: any(line.startswith("dead-gnss is offline since ") for line in dead.err), 20,
                   f"dead-gnss offline at start: {dead.err}")
        line = next(x for x in dead.err if x.startswith("dead-gnss is offline since "))
        assert line.endswith("(no reading yet; link disconnected: cannot open "
                             "/dev/serial/by-id/usb-not-plugged-in-if00: no such file or directory)"), line
        wait_until(lambda: len(live.err) >= 2, 20, "live subscribed and told its state")
        first = json.loads(live.err[1])
        assert (first["event"], first["device"], first["state"]) == ("device", "van-gnss", "starting")
        fs = iter(fixes(start=1_790_000_000.0))
        dev.write(epoch_bytes(next(fs)))
        wait_until(lambda: any('"state": "online"' in x for x in live.err), 20, f"online: {live.err}")
        # silent for longer than expected_interval (2 s): offline, since its last reading + 2 s
        wait_until(lambda: any('"state": "offline"' in x for x in live.err), 20, f"offline: {live.err}")
        ev = json.loads(next(x for x in live.err if '"state": "offline"' in x))
        assert ev["last_reading"] is not None and ev["since"] > ev["last_reading"]
        dev.write(epoch_bytes(next(fs)))
        wait_until(lambda: sum('"state": "online"' in x for x in live.err) == 2, 20, f"back online: {live.err}")
        # stdout and stderr are read by two threads: the reading may land after its `online` event
        wait_until(lambda: len(live.out) == 2, 20, f"both readings tailed: {live.out}")
        assert [json.loads(x)["seq"] for x in live.out] == [1, 2]
    finally:
        dead.close()
        live.close()


def test_one_rule_for_an_unknown_device(buffering: tuple[Path, PtyDevice, Broker]) -> None:
    cfg, dev, _ = buffering
    dev.write(epoch_bytes(next(iter(fixes(start=1_790_000_000.0)))))
    wait_until(lambda: run_cli("status", "--config", cfg, "--json").json()["buffer"]["depth"] == 1, 20, "buffered")
    t = run_cli("tail", "--config", cfg, "--device", "nope")
    e = run_cli("buffer", "export", "--config", cfg, "--device", "nope")
    assert (t.code, e.code) == (1, 1), (t, e)
    assert "no device 'nope' on gw-test (configured: van-gnss, dead-gnss)" in t.err
    assert "no device 'nope' in " in e.err and "(configured: van-gnss, dead-gnss)" in e.err and e.out == ""
    # A device taken out of the config keeps its buffered readings exportable (with a note).
    other = cfg.with_name("other.toml")
    other.write_text(cfg.read_text().replace('id = "van-gnss"', 'id = "bus-gnss"'))
    kept = run_cli("buffer", "export", "--config", other, "--device", "van-gnss")
    assert kept.code == 0 and "not in the current config" in kept.err
    assert [json.loads(x)["device"] for x in kept.out.splitlines()[1:]] == ["van-gnss"]


# -- scripting --------------------------------------------------------------------------------
def test_json_errors_and_a_verbs_own_usage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "BAD"\n[buffer]\nmax_bytes = 5\n')
    r = run_cli("config", "check", "--json", bad)
    assert r.code == 78
    err = r.json()["error"]
    assert (r.json()["ok"], err["exit"], err["kind"], err["path"]) == (False, 78, "config", str(bad))
    assert [p.split(":")[0] for p in err["problems"]] == ["gateway.id", "buffer.max_bytes"]
    assert "(line 2)" in err["problems"][0]
    good = write_config(tmp_path / "agent.toml", broker_port=1)
    for argv in (["buffer", "stats", "--json"], ["status", "--json"], ["doctor", "--json"]):
        r = run_cli(*argv, "--config", good if argv[0] != "doctor" else bad)
        assert r.code in (1, 69, 78) and r.json()["ok"] is False, (argv, r)
    r = run_cli("buffer", "stats", "--json", "--config", good)
    assert r.json()["error"]["message"].startswith("edge-agent buffer: no buffer database at ")
    r = run_cli("status", "--jsno", "--config", good)
    assert r.code == 2 and r.err.startswith("usage: edge-agent status ") and "unrecognized arguments: --jsno" in r.err
    r = run_cli("buffer", "export", "--jsno", "--json")
    assert r.code == 2 and r.json()["error"]["kind"] == "usage" and "edge-agent buffer export" in r.err


def test_config_show_prints_durations_and_sizes_as_written(tmp_path: Path) -> None:
    src = tmp_path / "agent.toml"
    src.write_text(textwrap.dedent("""\
        [gateway]
        id = "gw-a"
        [buffer]
        max_age = "14d"
        max_bytes = "64MiB"
        [[devices]]
        id = "co2"
        driver = "sim"
        family = "senseair_s8"
        interval = "3s"
        [[devices]]
        id = "gnss"
        driver = "nmea"
        port = "/dev/ttyUSB0"
        expected_interval = "30s"
        """))
    r = run_cli("config", "show", src)
    assert r.code == 0, r
    out = r.out
    for line in ('max_age = "14d"', 'max_bytes = "64MiB"', 'commit_interval = "500ms"', 'min_free_disk = "8MB"',
                 'health_interval = "1m"', 'expected_interval = "30s"', 'interval = "3s"'):
        assert f"\n{line}\n" in out, (line, out)
    assert "1209600" not in out
    sim, nmea = out.split("[[devices]]")[1:]
    assert "parity" not in sim and "stopbits" not in sim and "port" not in sim  # a sim device has no serial line
    assert 'parity = "N"' in nmea and 'port = "/dev/ttyUSB0"' in nmea
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    assert run_cli("config", "check", shown).code == 0
    assert load_config(shown).buffer == load_config(src).buffer.model_copy(update={"path": tmp_path / "buffer.db"})
    assert run_cli("config", "show", "--json", src).json()["buffer"]["max_age"] == 1209600.0  # JSON: numbers


# -- start-up ---------------------------------------------------------------------------------
HEAVY = ("pydantic", "importlib.metadata", "aiomqtt", "dbus_fast", "asyncio", "agent.config")


def imported(*argv: str | Path) -> tuple[int, set[str]]:
    """(exit code, modules imported) of `python -X importtime -m agent *argv`."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent", *map(str, argv)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    mods = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    return r.returncode, mods


def test_help_and_socket_verbs_do_not_load_the_config_layer(tmp_path: Path, broker: Broker) -> None:
    code, mods = imported("--help")
    # `--help` lists the drivers, plugins included: the registry reads entry points (importlib.metadata)
    light = [m for m in HEAVY if m in mods and m != "importlib.metadata"]
    assert code == 0 and not light, light
    code, mods = imported("status", "--help")  # a verb's help needs no registry
    assert code == 0 and not [m for m in HEAVY if m in mods], sorted(m for m in HEAVY if m in mods)
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port)
    for verb in ("status", "devices", "tail"):
        code, mods = imported(verb, "--config", cfg)  # no agent yet: 69, without pydantic
        assert code == 69 and not [m for m in HEAVY if m in mods], (verb, sorted(m for m in HEAVY if m in mods))
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: run_cli("status", "--config", cfg).code != 69, 20, "agent up")
        for verb in ("status", "devices"):
            code, mods = imported(verb, "--config", cfg)
            assert code in (0, 3) and not [m for m in HEAVY if m in mods], (verb, sorted(m for m in HEAVY if m in mods))
        code, mods = imported("config", "check", cfg)  # the config layer where it is the job
        assert code == 0 and "pydantic" in mods
    finally:
        agent.close()


# -- clean stops ------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_with_a_tail_client_connected_logs_no_error(
    tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice], sig: signal.Signals
) -> None:
    dev = pty_factory()
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port))
    agent = AgentProcess(cfg).start_and_wait_port()
    tails = [Spawned("tail", "--config", cfg), Spawned("tail", "--config", cfg, "--device", "van-gnss")]
    try:
        for t in tails:
            wait_until(lambda t=t: any("following readings" in line for line in t.err), 20, "tail subscribed")
        agent.signal(sig)
        assert agent.wait(20) == 0
        for t in tails:
            assert t.wait(20) == 69, t.err
            assert any("the agent went away" in line for line in t.err), t.err
    finally:
        for t in tails:
            t.close()
        agent.close()
    log = agent.output()
    assert "ERROR" not in log and "Traceback" not in log and "CancelledError" not in log, log[-3000:]


# -- a user outside the service group ---------------------------------------------------------
def as_nobody(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """`edge-agent *argv` as user nobody (Debian's python3.11 on this tree and the venv's packages)."""
    site = next((ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PYTHON, "-m", "agent", *map(str, argv)],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{site}", "COLUMNS": "80", "NO_COLOR": "1"})


PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder user nobody may read (pytest's tmp_path is private to root)."""
    if os.getuid() != 0 or not shutil.which("setpriv") or not os.access(PYTHON, os.X_OK):
        pytest.skip(f"needs root, setpriv and {PYTHON}")
    d = Path(tempfile.mkdtemp(prefix="edge-agent-perm-"))
    d.chmod(0o755)
    probe = as_nobody("--version")
    if probe.returncode != 0:
        shutil.rmtree(d)
        pytest.skip(f"user nobody cannot run this tree: {probe.stderr[-300:]}")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_user_outside_the_service_group_is_told_why(
    public_dir: Path, broker: Broker, pty_factory: type[PtyDevice]
) -> None:
    dev = pty_factory()  # a 0620/0600 pty of root: no group can help
    os.chmod(dev.port, 0o600)
    cfg = write_config(public_dir / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port))
    cfg.chmod(0o644)
    agent = AgentProcess(cfg).start_and_wait_port()
    try:
        wait_until(lambda: run_cli("status", "--config", cfg).code != 69, 20, "agent up")
        wait_until(lambda: (public_dir / "buffer.db").exists(), 20, "buffer created")
        assert os.stat(public_dir / "control.sock").st_mode & 0o777 == 0o660
        st = as_nobody("status", "--config", cfg)
        assert st.returncode == 69 and st.stdout == ""
        assert st.stderr.startswith("edge-agent: agent not reachable: permission denied\n"), st.stderr
        assert "is the service running?" not in st.stderr  # it is: say what is wrong instead
        assert "belongs to group root (mode 0660): set [control].group" in st.stderr
        assert "usermod" not in st.stderr  # joining root is no answer
        bs = as_nobody("buffer", "stats", "--config", cfg)
        assert bs.returncode == 0, bs.stderr
        assert "agent not running" not in bs.stdout and "no permission on the control socket" in bs.stdout
        assert as_nobody("buffer", "stats", "--json", "--config", cfg).stdout.count('"agent_running": null') == 1
        doc = as_nobody("doctor", "--config", cfg, "--timeout", "1")
        assert doc.returncode == 1
        assert "usermod -aG root" not in doc.stdout  # a group cannot help a 0600 port
        assert "no group can help a 0600 port" in doc.stdout and "99-edge-agent-serial.rules" in doc.stdout
        assert "control socket: permission denied" in doc.stdout
        assert fits(doc.stdout), doc.stdout
    finally:
        agent.close()


def test_socket_access_hint_for_an_owner_only_socket(tmp_path: Path) -> None:
    from agent.cli.control_client import socket_access

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "c.sock"
    s.bind(str(path))
    s.close()
    assert socket_access(path) == ""  # root may
