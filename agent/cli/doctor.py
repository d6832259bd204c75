"""`edge-agent doctor`: on-site checks, each with a verdict (ok, warn, fail, skipped) and a hint."""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import stat
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.cli.common import EXIT_CONFIG, EXIT_FAILURE, add_config_arg, add_json_arg, config_path, print_json
from agent.errors import AgentNotReachable, ConfigError, ControlError
from agent.fmt import age, paint, size, width, words, wrap

if TYPE_CHECKING:
    import sqlite3
    import ssl

    from agent.config import AgentConfig
    from agent.mqttcodes import Failure

Verdict = Literal["ok", "warn", "fail", "skipped"]
UNIT = "edge-agent.service"
BROKER_TIMEOUT = 5.0
CERT_WARN_DAYS = 30
MIN_FREE = 64 * 1000 * 1000
SYSTEMD_RUN = "/run/systemd/system"  # exists when booted with systemd
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
UDEV_RULE = "99-edge-agent-serial.rules"


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict."""

    name: str
    verdict: Verdict
    detail: str
    hint: str = ""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check config, permissions, buffer, disk, ports, Bluetooth, broker, clock, service",
        description="Run every on-site check and print a verdict for each "
        "(ok, warn, FAIL, skipped) "
        "with a hint. Exit 1 when any check fails, 78 when the config is invalid.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=BROKER_TIMEOUT,
        metavar="S",
        help=f"broker connection timeout in seconds (default {BROKER_TIMEOUT:g})",
    )
    p.set_defaults(func=doctor)


# -- config and permissions ---------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def check_permissions(cfg: AgentConfig) -> Check:
    """Config not world-writable (nor world-readable holding secrets); secret files 0600/0640."""
    from agent.config import masked_dump

    problems: list[str] = []
    notes: list[str] = []
    src = cfg.source_path
    if src is not None:
        m = _mode(src)
        inline = masked_dump(cfg) != cfg.model_dump(mode="json", exclude_none=False)
        refs = cfg.uplink.password_file is not None or (
            cfg.uplink.tls is not None and cfg.uplink.tls.key_file
        )
        if m & 0o002:
            problems.append(f"{src} is world-writable ({m:04o}): anyone can redirect the uplink")
        if m & 0o004 and inline:
            problems.append(f"{src} holds secrets and is world-readable ({m:04o})")
        elif m & 0o004 and refs:
            notes.append(f"{src} is world-readable ({m:04o}) and names secret files")
        else:
            notes.append(f"{src.name} {m:04o}")
    secrets = [("uplink.password_file", cfg.uplink.password_file)]
    if cfg.uplink.tls is not None:
        secrets.append(("uplink.tls.key_file", cfg.uplink.tls.key_file))
    for key, p in secrets:
        if p is None:
            continue
        try:
            m = _mode(p)
        except OSError as e:
            problems.append(f"{key}: cannot stat {p}: {e.strerror}")
            continue
        if m & 0o037:  # group write/exec or any world bit
            problems.append(f"{key}: {p} has mode {m:04o} (want 0600 or 0640)")
        else:
            notes.append(f"{p.name} {m:04o}")
        if not os.access(p, os.R_OK):
            problems.append(f"{key}: {p} is not readable by this user")
    if problems:
        return Check(
            "permissions",
            "fail",
            "; ".join(problems),
            "chmod 0640 the config (owner root, group edge-agent) and 0600/0640 the secret files",
        )
    if any("world-readable" in n for n in notes):
        return Check("permissions", "warn", "; ".join(notes), "chmod o-r the config")
    return Check("permissions", "ok", ", ".join(notes) or "no secret files configured")


# -- buffer and disk ----------------------------------------------------------------------
def _depth(db: sqlite3.Connection) -> int:
    from agent.buffer import stored_depth

    return stored_depth(db)


def check_buffer(cfg: AgentConfig) -> Check:
    import sqlite3
    from urllib.parse import quote

    path = Path(cfg.buffer.path)
    if not path.exists():
        if not path.parent.exists():
            return Check(
                "buffer",
                "warn",
                f"{path.parent} does not exist yet",
                "the agent creates it on start; check [buffer].path",
            )
        return Check(
            "buffer", "ok", f"{path} not created yet (the agent creates it on first start)"
        )
    uri = "file:" + quote(str(path.resolve()))
    err: Exception | None = None
    for params in ("mode=ro", "mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(f"{uri}?{params}", uri=True, timeout=5.0)
            try:
                res = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
                jm = db.execute("PRAGMA journal_mode").fetchone()[0]
                depth = _depth(db)
            finally:
                db.close()
        except sqlite3.OperationalError as e:
            err = e
            continue
        except sqlite3.DatabaseError as e:
            return Check(
                "buffer",
                "fail",
                f"{path}: {e}",
                "the agent quarantines a corrupt database on start (kept as *.corrupt-*)",
            )
        if res != ["ok"]:
            return Check(
                "buffer",
                "fail",
                f"{path}: quick_check: {'; '.join(res[:3])}",
                "restart the agent: it quarantines the file and starts a fresh epoch",
            )
        corrupt = [
            p.name
            for p in path.parent.glob(f"{path.name}.corrupt-*")
            if not p.name.endswith(("-wal", "-shm"))
        ]
        extra = f"; quarantined copies kept: {', '.join(corrupt)}" if corrupt else ""
        return Check(
            "buffer",
            "warn" if corrupt else "ok",
            f"{path}: quick_check ok, journal {jm}, {depth} readings waiting{extra}",
        )
    if not os.access(path, os.R_OK):
        return Check("buffer", "fail", f"{path}: not readable for {pwd.getpwuid(os.getuid()).pw_name} "
                     f"({_owner(path)})", "run doctor with sudo, or as a member of the file's group")
    return Check("buffer", "fail", f"{path}: cannot open: {err}", "check the file's owner and mode")


def _owner(p: Path) -> str:
    """`0640 edge-agent:edge-agent`."""
    st = p.stat()
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{stat.S_IMODE(st.st_mode):04o} {user}:{group}"


def check_disk(cfg: AgentConfig) -> Check:
    d = Path(cfg.buffer.path).parent
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        du = shutil.disk_usage(d)
    except OSError as e:
        return Check("disk", "fail", f"cannot read free space of {d}: {e.strerror}")
    path = Path(cfg.buffer.path)
    used = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    growth = max(0, cfg.buffer.max_bytes - used)
    detail = (
        f"{size(du.free)} free of {size(du.total)} on {d}; "
        f"the buffer may grow by {size(growth)} more"
    )
    if du.free < MIN_FREE:
        return Check(
            "disk",
            "fail",
            detail,
            "free space on the SD card (old logs: journalctl --vacuum-size=50M)",
        )
    if du.free < growth:
        return Check(
            "disk",
            "warn",
            detail,
            "lower [buffer].max_bytes or free space: the disk fills before the buffer",
        )
    return Check("disk", "ok", detail)


# -- serial ports -------------------------------------------------------------------------
def service_user() -> tuple[str, int, set[int]]:
    """(name, uid, gids) of the user the service runs as: the unit's User=, else this user."""
    name = _systemctl_show("User").get("User") or ""
    try:
        pw = pwd.getpwnam(name) if name else pwd.getpwuid(os.getuid())
    except KeyError:
        pw = pwd.getpwuid(os.getuid())
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    return pw.pw_name, pw.pw_uid, gids


def can_rw(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    """Would (uid, gids) get read+write on a file with this owner/group/mode?"""
    if uid == 0:
        return True
    m = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        return m & 0o600 == 0o600
    if st.st_gid in gids:
        return m & 0o060 == 0o060
    return m & 0o006 == 0o006


def check_serial(cfg: AgentConfig, user: tuple[str, int, set[int]] | None = None) -> list[Check]:
    devs = [d for d in cfg.devices if d.enabled and d.port]
    if not devs:
        return [Check("serial", "skipped", "no serial devices configured")]
    name, uid, gids = user or service_user()
    out = []
    for d in devs:
        port = Path(d.port or "")
        label = f"serial:{d.id}"
        if not port.exists():
            hint = (
                "plug the adapter in; list candidates with `ls -l /dev/serial/by-id/` "
                "or `edge-agent probe serial PORT`"
            )
            out.append(
                Check(
                    label,
                    "fail",
                    f"{port} not present" + (" (dangling link)" if port.is_symlink() else ""),
                    hint,
                )
            )
            continue
        real = port.resolve()
        st = real.stat()
        if not stat.S_ISCHR(st.st_mode):
            out.append(
                Check(
                    label,
                    "fail",
                    f"{port} -> {real} is not a character device",
                    "check [[devices]].port",
                )
            )
            continue
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        where = f"{port}" + (f" -> {real}" if real != port else "")
        if can_rw(st, uid, gids):
            out.append(
                Check(
                    label,
                    "ok",
                    f"{where} ({stat.S_IMODE(st.st_mode):04o}, group {group}), "
                    f"read/write for {name}",
                )
            )
        else:
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o060 == 0o060 and st.st_gid != 0:
                hint = f"sudo usermod -aG {group} {name}, then restart the service"
            else:  # no group can help a 0600 (or root-group) port: the device node's rule must change
                hint = (f"no group can help a {mode:04o} port of group {group}: give it group dialout and "
                        f"mode 0660 with a udev rule (systemd/{UDEV_RULE} -> /etc/udev/rules.d/), "
                        "then replug or `sudo udevadm trigger`")
            out.append(Check(label, "fail", f"{where} ({mode:04o}, group {group}) is not read/write for {name}",
                             hint))
    return out


# -- Bluetooth ------------------------------------------------------------------------------
def _ble_devices(cfg: AgentConfig) -> list[str]:
    from drivers import driver_class

    out = []
    for d in cfg.devices:
        if not d.enabled:
            continue
        try:
            transport = driver_class(d.driver).device_transport(d)
        except (ImportError, KeyError):
            transport = "ble" if d.address and not d.port else "none"
        if transport == "ble":  # a `sim` device with an address simulates BLE without a radio
            out.append(d.id)
    return out


async def _bluez_adapters(limit: float) -> list[dict[str, Any]] | None:
    """Adapters known to BlueZ over the system bus; None when org.bluez is not on the bus."""
    import asyncio

    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    async with asyncio.timeout(limit):
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        async with asyncio.timeout(limit):
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path="/",
                    interface="org.freedesktop.DBus.ObjectManager",
                    member="GetManagedObjects",
                )
            )
        if reply is None or reply.message_type == MessageType.ERROR:
            return None
        adapters = []
        for path, ifaces in reply.body[0].items():
            a = ifaces.get("org.bluez.Adapter1")
            if a is not None:
                adapters.append({"path": path, **{k: getattr(v, "value", v) for k, v in a.items()}})
        return sorted(adapters, key=lambda a: a["path"])
    finally:
        bus.disconnect()


def check_bluetooth(cfg: AgentConfig, timeout: float = 3.0) -> Check:
    import asyncio

    ble = _ble_devices(cfg)
    need: Verdict = "fail" if ble else "warn"
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        return Check("bluetooth", "skipped", "dbus-fast is not installed (comes with bleak)")
    try:
        adapters = asyncio.run(_bluez_adapters(timeout))
    except (OSError, TimeoutError, ValueError, EOFError) as e:
        return Check(
            "bluetooth",
            "skipped" if not ble else "fail",
            f"D-Bus system bus not reachable ({type(e).__name__}: {e})",
            "" if not ble else "is dbus running? systemctl status dbus",
        )
    except Exception as e:  # dbus_fast errors (AuthError, DBusError...)
        return Check(
            "bluetooth", "skipped" if not ble else "fail", f"D-Bus: {type(e).__name__}: {e}"
        )
    if adapters is None:
        if not ble:
            return Check("bluetooth", "skipped", "BlueZ is not running; no BLE devices configured")
        return Check(
            "bluetooth",
            "fail",
            "BlueZ (org.bluez) is not on the system bus",
            "sudo systemctl start bluetooth",
        )
    if not adapters:
        return Check(
            "bluetooth",
            need if ble else "skipped",
            "no Bluetooth adapter",
            "check `bluetoothctl list`; a USB dongle may need replugging" if ble else "",
        )
    names = ", ".join(
        f"{a['path'].rsplit('/', 1)[-1]} {a.get('Address', '?')}"
        f" {'powered' if a.get('Powered') else 'OFF'}"
        for a in adapters
    )
    if not any(a.get("Powered") for a in adapters):
        return Check(
            "bluetooth",
            need,
            f"adapter present but not powered: {names}",
            "rfkill unblock bluetooth; bluetoothctl power on",
        )
    return Check("bluetooth", "ok", f"{names}" + ("" if ble else " (no BLE devices configured)"))


# -- broker and TLS -----------------------------------------------------------------------
def _cert_expiry(tls_sock: ssl.SSLSocket) -> float | None:
    import ssl

    cert = tls_sock.getpeercert()
    if not cert or "notAfter" not in cert:
        return None
    return float(ssl.cert_time_to_seconds(str(cert["notAfter"])))


# Python 3.13 (Raspberry Pi OS Trixie) verifies with VERIFY_X509_STRICT by default; 3.11 (Bookworm) does not.
STRICT_HINT = (
    "the chain is trusted but not well-formed (RFC 5280): ask the platform for a CA certificate with "
    "keyUsage = critical, keyCertSign, cRLSign and basicConstraints = critical, CA:TRUE, and a server "
    "certificate with an authority key identifier; the agent never relaxes verification"
)


def _verify_failure(cfg: AgentConfig, *, strict: bool, timeout: float) -> str | None:
    """The verification error of a fresh handshake with strict X.509 checks on or off, None if it verifies."""
    import socket
    import ssl

    from agent.uplink import build_tls_context

    up = cfg.uplink
    ctx = build_tls_context(cfg)
    assert ctx is not None
    if strict:
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    else:
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    with socket.create_connection((up.host, up.port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=up.host):
                return None
        except ssl.SSLCertVerificationError as e:
            return e.verify_message or str(e)


def _strictness_explained(cfg: AgentConfig, *, strict: bool, timeout: float) -> str | None:
    """`_verify_failure`, or None when the probe itself fails for another reason (no claim then)."""
    import ssl

    try:
        return _verify_failure(cfg, strict=strict, timeout=timeout)
    except (ssl.SSLError, OSError, ConfigError):
        return None


def check_broker(cfg: AgentConfig, timeout: float = BROKER_TIMEOUT) -> list[Check]:
    """TCP reachability, TLS handshake and certificate expiry, then an MQTT CONNECT."""
    import asyncio
    import socket
    import ssl

    from agent.uplink import build_tls_context, read_password

    up = cfg.uplink
    where = f"{up.host}:{up.port}"
    try:
        raw = socket.create_connection((up.host, up.port), timeout=timeout)
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        return [
            Check(
                "broker",
                "fail",
                f"{where} unreachable: {why}",
                "check network (ping, DNS), [uplink].host/port and the firewall; "
                "readings are kept in the buffer meanwhile",
            )
        ]
    checks: list[Check] = []
    try:
        if up.tls is not None:
            try:
                ctx = build_tls_context(cfg)
                assert ctx is not None
                strict = bool(ctx.verify_flags & ssl.VERIFY_X509_STRICT)
                with ctx.wrap_socket(raw, server_hostname=up.host) as t:
                    t.settimeout(timeout)
                    exp = _cert_expiry(t)
                    version = t.version()
            except ConfigError as e:
                return [
                    Check(
                        "tls",
                        "fail",
                        "; ".join(e.problems),
                        "check the files named in [uplink].tls",
                    )
                ]
            except ssl.SSLCertVerificationError as e:
                msg = e.verify_message or str(e)
                if strict and _strictness_explained(cfg, strict=False, timeout=timeout) is None:
                    tls = Check(
                        "tls",
                        "fail",
                        f"certificate of {where} rejected by strict X.509 verification: {msg}. "
                        f"Python {PY} (Raspberry Pi OS Trixie) verifies strictly; the same chain "
                        "passes the lenient check of Python 3.11 (Bookworm), so it worked before the upgrade",
                        STRICT_HINT,
                    )
                else:
                    tls = Check(
                        "tls",
                        "fail",
                        f"certificate of {where} rejected: {msg}",
                        "expired or wrong CA: check [uplink].tls.ca_file and the system clock",
                    )
                return [Check("broker", "ok", f"{where} reachable (TCP)"), tls]
            except (ssl.SSLError, OSError) as e:
                return [
                    Check("broker", "ok", f"{where} reachable (TCP)"),
                    Check(
                        "tls",
                        "fail",
                        f"TLS handshake with {where} failed: {e}",
                        "is this port a TLS listener? check [uplink].port",
                    ),
                ]
            strict_msg = None if strict else _strictness_explained(cfg, strict=True, timeout=timeout)
            if strict_msg is not None:
                checks.append(
                    Check(
                        "tls",
                        "warn",
                        f"{version}; certificate accepted by Python {PY}, but strict X.509 verification "
                        f"rejects it: {strict_msg}. Python 3.13 (Raspberry Pi OS Trixie) verifies strictly: "
                        "the uplink will fail after an upgrade",
                        STRICT_HINT,
                    )
                )
            elif exp is None:
                checks.append(Check("tls", "warn", f"{version}; certificate has no expiry date"))
            else:
                days = (exp - time.time()) / 86400
                when = time.strftime("%Y-%m-%d", time.gmtime(exp))
                if days < CERT_WARN_DAYS:
                    checks.append(
                        Check(
                            "tls",
                            "warn",
                            f"{version}; server certificate expires {when} (in {days:.0f} days)",
                            "ask the platform to renew it",
                        )
                    )
                else:
                    checks.append(
                        Check(
                            "tls",
                            "ok",
                            f"{version}; server certificate valid until {when} ({days:.0f} days)",
                        )
                    )
    finally:
        raw.close()
    try:
        password = read_password(cfg)
    except ConfigError as e:
        return [
            *checks,
            Check("broker", "fail", "; ".join(e.problems), "check [uplink].password_file"),
        ]
    err, failure = asyncio.run(_mqtt_connect(cfg, password, timeout))
    if err:
        checks.insert(
            0,
            Check(
                "broker",
                "fail",
                f"{where} reachable but MQTT CONNECT failed: {err}",
                _connect_hint(failure, cfg),
            ),
        )
    else:
        checks.insert(
            0,
            Check(
                "broker",
                "ok",
                f"{where} reachable, MQTT CONNECT accepted" + (" (TLS)" if up.tls else ""),
            ),
        )
    return checks


def _connect_hint(failure: Failure | None, cfg: AgentConfig) -> str:
    """What to check after a refused CONNECT, by the failure its reason code names."""
    from agent.mqttcodes import Failure

    if failure is Failure.NOT_AUTHORISED:
        return ("check [uplink].username / password_file with the platform; the broker may also deny "
                f"client id {cfg.client_id!r} (its ACL)")
    if failure is Failure.SERVER_UNAVAILABLE:
        return "the broker takes no sessions for now (unavailable or busy): try again later or ask the platform"
    if failure is Failure.CLIENT_ID_REJECTED:
        return f"the broker refuses client id {cfg.client_id!r}: check [uplink].client_id with the platform"
    if failure is Failure.PROTOCOL_REJECTED:
        return f"the broker refuses MQTT {cfg.uplink.protocol}: check [uplink].protocol"
    if failure in (Failure.TLS, Failure.NOT_TLS):
        return "check [uplink].tls"
    return "check [uplink].username / password_file with the platform"


async def _mqtt_connect(cfg: AgentConfig, password: str | None, limit: float) -> tuple[str, Failure | None]:
    """('', None) when the broker accepts an MQTT session (own client id: the agent is not kicked off),
    else the error and the failure its reason code names."""
    import asyncio
    import ssl

    import aiomqtt

    from agent.uplink import build_tls_context

    up = cfg.uplink
    client = aiomqtt.Client(
        up.host,
        up.port,
        username=up.username,
        password=password,
        identifier=f"{cfg.client_id}-doctor-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5 if up.protocol == "5" else aiomqtt.ProtocolVersion.V311,
        timeout=limit,
        tls_context=build_tls_context(cfg),
    )
    try:
        async with asyncio.timeout(limit + 1):
            async with client:
                pass
    except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError) as e:
        from agent.mqttcodes import classify

        return str(e) or type(e).__name__, classify(e, tls=up.tls is not None)
    return "", None


# -- clock and service --------------------------------------------------------------------
def check_clock() -> Check:
    from agent.clock import TIMESYNC_FLAG, ClockMonitor, kernel_synced

    state = ClockMonitor().detect()
    forced = os.environ.get("EDGE_AGENT_CLOCK") in ("synced", "unsynced")
    src = (
        "EDGE_AGENT_CLOCK"
        if forced
        else "systemd-timesyncd"
        if os.path.exists(TIMESYNC_FLAG)
        else "kernel (adjtimex)"
        if kernel_synced() is not None
        else "unknown (assumed synced)"
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if state == "synced":
        return Check("clock", "ok", f"synchronised ({src}); now {now}")
    return Check(
        "clock",
        "fail",
        f"not synchronised ({src}); now {now}; readings are marked clock=unsynced",
        "timedatectl status; check NTP reachability (systemd-timesyncd) or add an RTC",
    )


def _systemctl_show(*props: str) -> dict[str, str]:
    import subprocess

    if not os.path.isdir(SYSTEMD_RUN) or not shutil.which("systemctl"):
        return {}
    try:
        out = subprocess.run(
            ["systemctl", "show", UNIT, *(f"--property={p}" for p in props)],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def check_systemd() -> Check:
    if not os.path.isdir(SYSTEMD_RUN):
        return Check("systemd", "skipped", "this system was not booted with systemd")
    p = _systemctl_show("LoadState", "ActiveState", "SubState", "UnitFileState", "FragmentPath")
    if not p:
        return Check("systemd", "fail", "systemctl did not answer")
    if p.get("LoadState") != "loaded":
        return Check(
            "systemd",
            "fail",
            f"{UNIT} is not installed ({p.get('LoadState', '?')})",
            "install it: sudo systemd/install.sh (see README)",
        )
    detail = (
        f"{UNIT} {p.get('ActiveState')}/{p.get('SubState')}, {p.get('UnitFileState')} "
        f"({p.get('FragmentPath')})"
    )
    if p.get("ActiveState") != "active":
        return Check(
            "systemd", "fail", detail, f"sudo systemctl start {UNIT}; journalctl -u {UNIT} -n 50"
        )
    if p.get("UnitFileState") not in ("enabled", "static", "enabled-runtime"):
        return Check(
            "systemd", "warn", detail, f"it will not start at boot: sudo systemctl enable {UNIT}"
        )
    return Check("systemd", "ok", detail)


def check_agent(cfg: AgentConfig) -> Check:
    from agent.cli.control_client import ControlClient, socket_access

    try:
        with ControlClient(Path(cfg.control.socket), timeout=5.0) as c:
            st = c.request("status")
    except AgentNotReachable as e:
        denied = socket_access(Path(cfg.control.socket))
        if denied:
            return Check("agent", "fail", "control socket: permission denied", denied)
        return Check("agent", "fail", f"not reachable: {e}", "systemctl status edge-agent")
    except ControlError as e:
        return Check("agent", "warn", f"answers but refused status: {e}")
    up = st["uplink"]
    detail = (
        f"pid {st['pid']}, up {age(st['uptime'])}, uplink {up['state']}"
        + (f" ({up['last_error']})" if up["state"] != "connected" and up["last_error"] else "")
        + f", {st['buffer']['depth']} readings buffered"
    )
    offline = [
        i for i, d in (st.get("devices") or {}).items() if d.get("state", "offline") == "offline"
    ]
    if offline:
        return Check(
            "agent",
            "warn",
            detail + f"; not delivering: {', '.join(offline)}",
            "see `edge-agent devices`",
        )
    return Check("agent", "ok", detail)


# -- the verb -----------------------------------------------------------------------------
def run_checks(cfg: AgentConfig, timeout: float = BROKER_TIMEOUT) -> list[Check]:
    checks = [
        Check(
            "config",
            "ok",
            f"{cfg.source_path}: valid (gateway {cfg.gateway.id}, {len(cfg.devices)} devices)",
        )
    ]
    checks.append(check_permissions(cfg))
    checks.append(check_buffer(cfg))
    checks.append(check_disk(cfg))
    checks.extend(check_serial(cfg))
    checks.append(check_bluetooth(cfg))
    checks.extend(check_broker(cfg, timeout))
    checks.append(check_clock())
    checks.append(check_systemd())
    checks.append(check_agent(cfg))
    return checks


def doctor(args: argparse.Namespace) -> int:
    from agent.config import load_config

    path = config_path(args)
    try:
        # Referenced files (password, TLS) get verdicts of their own below, next to every other check.
        cfg = load_config(path, check_files=False)
    except ConfigError as e:
        checks = [Check("config", "fail", "; ".join(e.problems), f"edge-agent config check {path}")]
        code = EXIT_CONFIG
    else:
        checks = run_checks(cfg, args.timeout)
        code = EXIT_FAILURE if any(c.verdict == "fail" for c in checks) else 0
    if args.json:
        print_json({"ok": code == 0, "config": str(path), "checks": [asdict(c) for c in checks]})
        return code
    print(render_checks(checks, path, width()))
    return code


STYLE = {"ok": ("ok", "ok"), "warn": ("warn", "warn"), "fail": ("FAIL", "fail"), "skipped": ("skip", "dim")}


def render_checks(checks: list[Check], path: Path, cols: int = 80) -> str:
    """One verdict a check, detail and `->` hint folded under it to `cols` columns."""
    w = min(max(len(c.name) for c in checks), 16)
    head = 2 + 5 + 1 + w + 2  # where the first detail line starts
    more = 8  # continuation and hints: under the name, so a long detail keeps 72 of 80 columns
    out = [f"edge-agent doctor ({path})"]
    for c in checks:
        label, st = STYLE[c.verdict]
        name = c.name if len(c.name) <= w else c.name[: w - 1] + "…"
        lines = wrap(words(c.detail), cols, indent=more, first=" " * head)
        out.append(f"  {paint(f'{label:<5}', st)} {name:<{w}}  " + lines[0][head:])
        out += lines[1:]
        if c.hint and c.verdict in ("fail", "warn"):
            out += wrap(c.hint, cols, indent=more + 3, first=" " * more + "-> ")
    failed = sum(c.verdict == "fail" for c in checks)
    warned = sum(c.verdict == "warn" for c in checks)
    warnings = f"{warned} warning" + ("" if warned == 1 else "s")
    out.append(
        paint(f"{failed} failed, {warnings}", "fail")
        if failed
        else paint(
            f"all checks passed ({warnings})" if warned else "all checks passed",
            "warn" if warned else "ok",
        )
    )
    return "\n".join(out)
