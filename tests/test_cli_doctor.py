"""`edge-agent doctor`: a verdict per check; real brokers (plain and TLS), ptys and D-Bus."""

from __future__ import annotations

import grp
import os
import select
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import uplink
from agent.cli import doctor
from agent.config import AgentConfig, load_config
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker, free_port
from tests.support.cli import run_cli
from tests.support.mqtt import wait_until
from tests.support.pty import PtyDevice


@pytest.fixture(autouse=True)
def _host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pin what the host would otherwise decide: clock synced, no system bus, no systemd."""
    monkeypatch.setenv("EDGE_AGENT_CLOCK", "synced")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-system-bus")
    monkeypatch.setattr(doctor, "SYSTEMD_RUN", str(tmp_path / "no-systemd"))


def verdicts(result_json: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {c["name"]: c["verdict"] for c in result_json["checks"]}


def test_doctor_passes_with_a_healthy_gateway(
    tmp_path: Path, broker: Broker, pty_factory: type[PtyDevice]
) -> None:
    dev = pty_factory()
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    cfg = write_config(
        tmp_path / "agent.toml",
        broker_port=broker.port,
        uplink='username = "gw-test"\npassword_file = "mqtt-password"',
        devices=f"""
        [[devices]]
        id = "van-gnss"
        driver = "nmea"
        port = "{dev.port}"
        """,
    )
    cfg.chmod(0o640)
    agent = AgentProcess(cfg, env={"EDGE_AGENT_CLOCK": "synced"}).start_and_wait_port()
    try:
        r = run_cli("doctor", "--config", cfg, "--json")
        assert r.code == 0, r.out
        assert r.json()["ok"] is True
        assert verdicts(r.json()) == {
            "config": "ok",
            "permissions": "ok",
            "buffer": "ok",
            "disk": "ok",
            "serial:van-gnss": "ok",
            "bluetooth": "skipped",
            "broker": "ok",
            "clock": "ok",
            "systemd": "skipped",
            "agent": "ok",
        }
        checks = {c["name"]: c for c in r.json()["checks"]}
        assert checks["permissions"]["detail"] == "agent.toml 0640, mqtt-password 0600"
        assert "MQTT CONNECT accepted" in checks["broker"]["detail"]
        assert "quick_check ok" in checks["buffer"]["detail"]
        assert f"{dev.port} (" in checks["serial:van-gnss"]["detail"]
        human = run_cli("doctor", "--config", cfg)
        assert human.code == 0
        assert human.out.splitlines()[-1] == "all checks passed"
        assert "  ok    broker" in human.out and "  skip  systemd" in human.out
    finally:
        agent.close()


def test_doctor_names_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_CLOCK", "unsynced")
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    cfg = write_config(
        tmp_path / "agent.toml",
        broker_port=free_port(),
        uplink='username = "gw-test"\npassword_file = "mqtt-password"',
        devices="""
        [[devices]]
        id = "pm-sensor"
        driver = "nmea"
        port = "/dev/serial/by-id/usb-unplugged-if00"
        """,
    )
    r = run_cli("doctor", "--config", cfg, "--json")
    assert r.code == 1
    assert r.json()["ok"] is False
    v = verdicts(r.json())
    assert v == {
        "config": "ok",
        "permissions": "fail",
        "buffer": "ok",
        "disk": "ok",
        "serial:pm-sensor": "fail",
        "bluetooth": "skipped",
        "broker": "fail",
        "clock": "fail",
        "systemd": "skipped",
        "agent": "fail",
    }
    checks = {c["name"]: c for c in r.json()["checks"]}
    assert "mode 0644 (want 0600 or 0640)" in checks["permissions"]["detail"]
    assert (
        checks["serial:pm-sensor"]["detail"] == "/dev/serial/by-id/usb-unplugged-if00 not present"
    )
    assert "unreachable: Connection refused" in checks["broker"]["detail"]
    assert "not synchronised" in checks["clock"]["detail"]
    human = run_cli("doctor", "--config", cfg)
    assert human.code == 1
    assert "  FAIL  broker" in human.out and "-> check network" in human.out
    assert human.out.splitlines()[-1] == "5 failed, 0 warnings"
    assert "Traceback" not in human.out + human.err


def test_world_writable_config_fails(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", broker_port=1)
    cfg.chmod(0o666)
    c = doctor.check_permissions(load_config(cfg))
    assert c.verdict == "fail" and "world-writable (0666)" in c.detail
    cfg.chmod(0o644)
    assert doctor.check_permissions(load_config(cfg)).verdict == "ok"


def test_doctor_with_invalid_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('[gateway]\nid = "Bad Id"\n')
    r = run_cli("doctor", "--config", bad, "--json")
    assert r.code == 78
    assert (
        r.json()["checks"][0]["name"] == "config"
        and "gateway.id" in r.json()["checks"][0]["detail"]
    )


def test_serial_access_for_the_service_user(pty_factory: type[PtyDevice], tmp_path: Path) -> None:
    dev = pty_factory()
    cfg = load_config(
        write_config(
            tmp_path / "agent.toml",
            broker_port=1,
            devices=f"""
        [[devices]]
        id = "van-gnss"
        driver = "nmea"
        port = "{dev.port}"
        """,
        )
    )
    st = os.stat(dev.port)
    dialout = grp.getgrnam("dialout").gr_gid
    os.chown(dev.port, -1, dialout)
    os.chmod(dev.port, 0o660)
    try:
        stranger = ("edge-agent", 54321, {54321})
        [c] = doctor.check_serial(cfg, stranger)
        assert c.verdict == "fail" and "is not read/write for edge-agent" in c.detail
        assert c.hint == "sudo usermod -aG dialout edge-agent, then restart the service"
        member = ("edge-agent", 54321, {54321, dialout})
        assert doctor.check_serial(cfg, member)[0].verdict == "ok"
        # No group helps a 0600 port (nor joining root): the node's udev rule or mode must change.
        for gid, mode in ((dialout, 0o600), (0, 0o660)):
            os.chown(dev.port, -1, gid)
            os.chmod(dev.port, mode)
            [c] = doctor.check_serial(cfg, stranger)
            assert c.verdict == "fail" and "usermod" not in c.hint, c
            assert "udev rule (systemd/99-edge-agent-serial.rules" in c.hint and "mode 0660" in c.hint
    finally:
        os.chown(dev.port, -1, st.st_gid)
        os.chmod(dev.port, st.st_mode & 0o7777)
    assert doctor.can_rw(os.stat_result((0o20666, 0, 0, 1, 1, 5, 0, 0, 0, 0)), 54321, {7})
    assert not doctor.can_rw(os.stat_result((0o20600, 0, 0, 1, 1, 5, 0, 0, 0, 0)), 54321, {5})


# -- TLS ------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, server certs for 127.0.0.1 (400 days, 10 days, expired), a stranger CA, and a legacy CA.

    The CAs carry what RFC 5280 asks of a CA and Python 3.13's VERIFY_X509_STRICT checks (critical
    basic constraints, key usage keyCertSign, key identifiers); the legacy CA is made the way many
    older city PKIs were, without key usage, which 3.11 accepts and 3.13 rejects.
    """
    d = tmp_path_factory.mktemp("pki")
    (d / "ca.cnf").write_text(
        textwrap.dedent("""\
        [ca]
        default_ca = CA_default
        [CA_default]
        database = index.txt
        new_certs_dir = .
        serial = serial
        default_md = sha256
        policy = policy_any
        copy_extensions = copy
        unique_subject = no
        x509_extensions = server_ext
        [policy_any]
        commonName = supplied
        [server_ext]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid
        """)
    )
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "subjectKeyIdentifier=hash",
    ]
    key_usage = ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    for name, cn, ext in (
        ("ca", "test-ca", [*ca_ext, *key_usage]),
        ("other-ca", "other-ca", [*ca_ext, *key_usage]),
        ("legacy-ca", "legacy-city-ca", ca_ext),
    ):
        _openssl(
            "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "3650", "-subj", f"/CN={cn}", *ext, cwd=d,
        )  # fmt: skip
    _openssl(
        "req",
        *ec,
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        cwd=d,
    )

    def sign(ca: str, out: str, *validity: str) -> None:
        _openssl(
            "ca", "-batch", "-config", "ca.cnf", "-cert", f"{ca}.pem", "-keyfile", f"{ca}.key",
            "-in", "server.csr", "-out", out, *validity, cwd=d,
        )  # fmt: skip

    sign("ca", "long.pem", "-days", "400")
    sign("ca", "short.pem", "-days", "10")
    sign("ca", "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z")
    sign("legacy-ca", "legacy.pem", "-days", "400")
    return d


def tls_checks(pki: Path, tmp_path: Path, cert: str, ca: str) -> dict[str, doctor.Check]:
    """doctor's broker checks against a TLS Mosquitto serving `cert`, trusting `ca`."""
    b = Broker(
        extra=f"user root\ncafile {pki / 'ca.pem'}\ncertfile {pki / cert}\n"
        f"keyfile {pki / 'server.key'}\n"
    ).start()
    try:
        cfg = load_config(
            write_config(
                tmp_path / "agent.toml",
                broker_port=b.port,
                uplink=f'tls = {{ ca_file = "{pki / ca}" }}',
            )
        )
        return {c.name: c for c in doctor.check_broker(cfg, timeout=5)}
    finally:
        b.close()


@pytest.mark.parametrize(
    ("cert", "ca", "verdict", "text"),
    [
        ("long.pem", "ca.pem", "ok", "valid until"),
        ("short.pem", "ca.pem", "warn", "expires"),
        ("expired.pem", "ca.pem", "fail", "certificate has expired"),
        ("long.pem", "other-ca.pem", "fail", "rejected"),
    ],
)
def test_broker_tls_verdicts(
    pki: Path, tmp_path: Path, cert: str, ca: str, verdict: str, text: str
) -> None:
    checks = tls_checks(pki, tmp_path, cert, ca)
    assert checks["tls"].verdict == verdict, checks
    assert text in checks["tls"].detail
    if verdict != "fail":
        assert checks["broker"].verdict == "ok"
        assert checks["broker"].detail.endswith("reachable, MQTT CONNECT accepted (TLS)")


@pytest.mark.parametrize("strict", [True, False], ids=["strict-like-3.13", "lenient-like-3.11"])
def test_broker_tls_explains_a_ca_without_key_usage(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    """A city CA without key usage: FAIL in words where verification is strict, a warning where not."""
    real = uplink.build_tls_context

    def as_on(cfg: AgentConfig) -> ssl.SSLContext | None:
        ctx = real(cfg)
        assert ctx is not None
        if strict:  # what Python 3.13's create_default_context sets
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        else:  # what Python 3.11's does
            ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
        return ctx

    monkeypatch.setattr(uplink, "build_tls_context", as_on)
    checks = tls_checks(pki, tmp_path, "legacy.pem", "legacy-ca.pem")
    tls = checks["tls"]
    assert "CA cert does not include key usage extension" in tls.detail, tls
    assert "Raspberry Pi OS Trixie" in tls.detail
    assert "keyUsage = critical, keyCertSign" in tls.hint
    if strict:
        assert tls.verdict == "fail"
        assert "rejected by strict X.509 verification" in tls.detail
        assert "passes the lenient check of Python 3.11 (Bookworm)" in tls.detail
        assert checks["broker"].detail.endswith("reachable (TCP)")
    else:
        assert tls.verdict == "warn"
        assert "the uplink will fail after an upgrade" in tls.detail
        assert checks["broker"].verdict == "ok"
        assert checks["broker"].detail.endswith("MQTT CONNECT accepted (TLS)")


def test_strict_explanation_is_not_given_for_a_wrong_ca(pki: Path, tmp_path: Path) -> None:
    """A stranger CA fails the lenient check too: the plain 'rejected' verdict, no Trixie story."""
    checks = tls_checks(pki, tmp_path, "legacy.pem", "other-ca.pem")
    assert checks["tls"].verdict == "fail"
    assert "rejected: " in checks["tls"].detail
    assert "strict" not in checks["tls"].detail
    assert "ca_file" in checks["tls"].hint


def test_plaintext_port_with_tls_configured_fails(
    pki: Path, tmp_path: Path, broker: Broker
) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "agent.toml",
            broker_port=broker.port,
            uplink=f'tls = {{ ca_file = "{pki / "ca.pem"}" }}',
        )
    )
    checks = {c.name: c for c in doctor.check_broker(cfg, timeout=3)}
    assert checks["tls"].verdict == "fail"


# -- Bluetooth over a private D-Bus with a scripted BlueZ -----------------------------------
FAKE_BLUEZ = r"""
import asyncio, sys
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

class Adapter(ServiceInterface):
    def __init__(self, address, powered):
        super().__init__("org.bluez.Adapter1")
        self._address, self._powered = address, powered

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return self._address

    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> "b":
        return self._powered

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    # dbus-fast answers org.freedesktop.DBus.ObjectManager.GetManagedObjects for what is exported.
    for i, state in enumerate(sys.argv[2:]):
        bus.export(f"/org/bluez/hci{i}", Adapter(f"DC:A6:32:00:00:0{i}", state == "on"))
    await bus.request_name("org.bluez")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def private_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    address = f"unix:path={tmp_path}/bus"
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", f"--address={address}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex(f"{tmp_path}/bus") == 0

    wait_until(up, 10, "dbus-daemon")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    yield address
    proc.kill()
    proc.wait()


def _bluez(address: str, *adapters: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", FAKE_BLUEZ, address, *adapters], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    # Bounded: a fake daemon stuck on the bus must fail this test, not hang the whole suite.
    if not select.select([p.stdout], [], [], 30)[0]:
        p.kill()
        p.wait()
        pytest.fail("fake bluetoothd did not get ready on the private bus within 30 s")
    assert p.stdout.readline().strip() == "ready"
    return p


def test_bluetooth_verdicts(
    private_bus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(write_config(tmp_path / "agent.toml", broker_port=1))
    c = doctor.check_bluetooth(cfg)
    assert (c.verdict, c.detail) == ("skipped", "BlueZ is not running; no BLE devices configured")
    monkeypatch.setattr(
        doctor, "_ble_devices", lambda cfg: ["tag-1"]
    )  # as if a BLE sensor were configured
    c = doctor.check_bluetooth(cfg)
    assert (c.verdict, c.hint) == ("fail", "sudo systemctl start bluetooth")
    for adapters, verdict, text in [
        (("on",), "ok", "hci0 DC:A6:32:00:00:00 powered"),
        (("off",), "fail", "adapter present but not powered: hci0 DC:A6:32:00:00:00 OFF"),
        ((), "fail", "no Bluetooth adapter"),
        (("off", "on"), "ok", "hci1 DC:A6:32:00:00:01 powered"),
    ]:
        bluez = _bluez(private_bus, *adapters)
        try:
            c = doctor.check_bluetooth(cfg)
            assert c.verdict == verdict, c
            assert text in c.detail
        finally:
            bluez.kill()
            bluez.wait()
