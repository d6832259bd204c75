"""systemd/install.sh in a throwaway root, and the unit checked by systemd-analyze.

What this machine cannot do: start the unit (systemd is not PID 1 here). The script then
enables the unit offline (`systemctl --root`) and says it did not start it; that is checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "edge-agent.service"
DROPIN = REPO / "systemd" / "remote-config.conf"
ANALYZE = shutil.which("systemd-analyze")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="install.sh creates a user and chowns: needs root"
)
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "VIRTUAL_ENV")}
    p = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def field(path: Path, name: str) -> list[str] | None:
    for line in path.read_text().splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return parts
    return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh root (the host's users, plus a bluetooth group as on Pi OS), installed once."""
    if os.geteuid() != 0:
        pytest.skip("install.sh needs root")
    r = tmp_path_factory.mktemp("pi-root")
    (r / "etc").mkdir()
    for f in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy(f"/etc/{f}", r / "etc" / f)
    if field(r / "etc/group", "bluetooth") is None:
        with open(r / "etc/group", "a") as g:
            g.write("bluetooth:x:112:\n")
    return r, run(r).stdout


@pytest.fixture
def root(installed: tuple[Path, str]) -> Path:
    return installed[0]


@needs_root
def test_install_into_a_throwaway_root(installed: tuple[Path, str]) -> None:
    root, out = installed
    assert "created system user edge-agent" in out
    assert "enabled in" in out and "not started" in out  # no running systemd here
    pw = field(root / "etc/passwd", "edge-agent")
    assert pw is not None and pw[5:] == ["/var/lib/edge-agent", "/usr/sbin/nologin"]
    uid, gid = int(pw[2]), int(pw[3])
    assert uid < 1000, "a system user"
    for g in ("dialout", "bluetooth"):
        grp = field(root / "etc/group", g)
        assert grp is not None and "edge-agent" in grp[3].split(",")
    cfg = root / "etc/edge-agent/agent.toml"
    assert cfg.read_text() == (REPO / "config/example.toml").read_text()
    st = cfg.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, gid)
    d = (root / "etc/edge-agent").stat()
    assert (d.st_mode & 0o777, d.st_uid, d.st_gid) == (0o750, 0, gid)
    s = (root / "var/lib/edge-agent").stat()
    assert (s.st_mode & 0o777, s.st_uid, s.st_gid) == (0o750, uid, gid)
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    link = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/edge-agent.service"
    assert (root / "etc/udev/rules.d/99-edge-agent-serial.rules").exists()
    venv = root / "opt/edge-agent/venv/bin/edge-agent"
    check = subprocess.run(
        [str(venv), "config", "check", "--config", str(cfg)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr


@needs_root
@needs_analyze
def test_installed_unit_verifies_clean(root: Path) -> None:
    verify(root)


def verify(root: Path) -> None:
    """`systemd-analyze verify --root` (drop-ins too): needs the target units and /bin/kill inside the root."""
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin/kill")
    p = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "edge-agent.service"],  # type: ignore[list-item]
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and p.stdout + p.stderr == "", p.stdout + p.stderr


@needs_root
def test_rerun_is_idempotent_and_keeps_the_config(root: Path) -> None:
    cfg = root / "etc/edge-agent/agent.toml"
    cfg.write_text(cfg.read_text().replace("gw-parken-01", "gw-edited"))
    uid = field(root / "etc/passwd", "edge-agent")
    out = run(root).stdout
    assert "kept existing" in out and "created" not in out
    assert "gw-edited" in cfg.read_text()
    assert field(root / "etc/passwd", "edge-agent") == uid
    assert [
        ln for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("edge-agent:")
    ] == [":".join(uid or [])]
    assert field(root / "etc/group", "dialout")[3].split(",").count("edge-agent") == 1  # type: ignore[index]


@needs_root
def test_uninstall_keeps_data_and_purge_removes_it(root: Path) -> None:
    (root / "var/lib/edge-agent/buffer.db").write_bytes(b"data")
    out = run(root, "--uninstall").stdout
    assert "kept configuration" in out
    assert not (root / "opt/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").exists()
    assert not (root / "etc/udev/rules.d/99-edge-agent-serial.rules").exists()
    assert (root / "var/lib/edge-agent/buffer.db").read_bytes() == b"data"
    assert (root / "etc/edge-agent/agent.toml").exists()
    assert field(root / "etc/passwd", "edge-agent") is not None
    run(root, "--uninstall", "--purge")
    assert not (root / "etc/edge-agent").exists() and not (root / "var/lib/edge-agent").exists()
    assert (
        field(root / "etc/passwd", "edge-agent") is None
        and field(root / "etc/group", "edge-agent") is None
    )
    assert "edge-agent" not in field(root / "etc/group", "dialout")[3]  # type: ignore[index]


@needs_analyze
def test_unit_security_exposure_at_most_2() -> None:
    p = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--threshold=20", str(UNIT)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d)", p.stdout)
    assert m is not None, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0 and p.returncode == 0, p.stdout[-3000:]


def directives(*files: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit and its drop-ins, values in order (an empty value resets a list)."""
    d: dict[str, list[str]] = {}
    for f in files:
        for ln in f.read_text().splitlines():
            if "=" in ln and not ln.startswith("#"):
                k, v = ln.split("=", 1)
                d.setdefault(k, []).append(v)
    return d


def test_unit_has_the_contracted_directives() -> None:
    d = directives(UNIT)
    assert d["Type"] == ["notify"]  # systemd 252 (Bookworm) has no notify-reload
    assert d["ExecStart"] == [
        "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml"
    ]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and d["RestartPreventExitStatus"] == ["78"]
    assert d["User"] == ["edge-agent"] and d["SupplementaryGroups"] == ["dialout"]
    for k in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert d[k] == ["edge-agent"]
    assert d["CapabilityBoundingSet"] == [""] and d["ProtectSystem"] == ["strict"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(d["DeviceAllow"])
    assert "WatchdogSec" in d and "TimeoutStopSec" in d


def test_remote_config_drop_in_makes_the_config_folder_writable() -> None:
    """ProtectSystem=strict keeps /etc read-only: the drop-in opens exactly the folder of ExecStart's --config."""
    folder = str(Path(directives(UNIT)["ExecStart"][0].split("--config ", 1)[1]).parent)
    assert folder == "/etc/edge-agent"
    assert "ReadWritePaths" not in directives(UNIT), "opt-in: the unit alone keeps the config read-only"
    d = directives(UNIT, DROPIN)
    assert d["ProtectSystem"] == ["strict"]
    assert folder in " ".join(d["ReadWritePaths"]).split()
    assert d["ConfigurationDirectoryMode"][-1] == "0770"  # as install.sh sets it: systemd keeps a differing mode


@needs_root
@needs_analyze
def test_install_remote_config_installs_the_drop_in_and_keeps_it(root: Path, tmp_path: Path) -> None:
    """--remote-config: the drop-in, a group-writable folder and file; a plain re-run keeps them; verify is clean."""
    r = tmp_path / "root"
    shutil.copytree(root, r, symlinks=True)
    out = run(r, "--remote-config").stdout
    dropin = r / "etc/systemd/system/edge-agent.service.d/remote-config.conf"
    assert "remote configuration allowed" in out and dropin.read_text() == DROPIN.read_text()
    gid = int(field(r / "etc/group", "edge-agent")[2])  # type: ignore[index]
    for _ in range(2):
        d, f = (r / "etc/edge-agent").stat(), (r / "etc/edge-agent/agent.toml").stat()
        assert (d.st_mode & 0o777, d.st_uid, d.st_gid) == (0o770, 0, gid)
        assert (f.st_mode & 0o777, f.st_uid, f.st_gid) == (0o660, 0, gid)
        run(r)
        assert dropin.exists()
    verify(r)
    run(r, "--uninstall")
    assert not dropin.parent.exists()


def test_help_prints_the_usage_comment_only() -> None:
    p = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.splitlines()[0].startswith("Install edge-agent as a systemd service")
    assert p.stdout.rstrip().endswith("never touches an existing config.")
    assert "set -euo" not in p.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr and "set -euo" not in bad.stdout
