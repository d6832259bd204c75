"""Signed remote commands: verification of a `P/commands` JWT, the replay store, the audit log.

A command is a compact JWS (RFC 7515/7519) signed with EdDSA over Ed25519 (RFC 8037), verified
with PyJWT restricted to EdDSA against the `[commands] trusted_keys` (kid = key file name
without its extension). Every refusal has a precise machine `reason` (REASONS) and the command is
never executed. Verified `jti`s are remembered in SQLite until their `exp`, across restarts.

While the gateway's clock is unsynchronised, `exp`/`iat` cannot be checked against it: then only
the read-only verbs (READ_ONLY) are accepted (signature, kid, aud, lifetime and replay still
checked); every other verb is refused with `clock_unsynced`. docs/PROTOCOL.md#commands.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from agent.errors import ConfigError
from agent.model import format_ts
from edge_common.errors import EdgeAgentError

# PyJWT and cryptography (~9 MB resident) load only where a key or a token is handled: the CLI
# parser names VERBS, and `edge-agent run` without [commands] must not pay for them.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERBS = ("ping", "status", "devices", "config.get", "config.apply", "device.restart", "uplink.reconnect",
         "buffer.stats")
READ_ONLY = frozenset({"ping", "status", "devices", "config.get", "buffer.stats"})  # accepted unsynced too
MAX_PAYLOAD = 64 * 1024  # bytes of the MQTT payload
LEEWAY = 30.0  # seconds of clock skew tolerated on exp and iat
RATE = 5.0  # commands per second, sustained
BURST = 10  # commands at once
JTI_MAX = 128
KID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# Every refusal reason (the `reason` of a `refused` result).
REASONS = (
    "oversize", "retained", "rate_limited", "malformed", "bad_alg", "unknown_kid", "bad_signature",
    "wrong_aud", "expired", "not_yet_valid", "lifetime_too_long", "replay", "unknown_verb", "not_allowed",
    "clock_unsynced", "bad_args", "base_mismatch", "invalid_config", "busy",
)


@dataclass(frozen=True, slots=True)
class Command:
    """A verified command, safe to execute."""

    jti: str
    cmd: str
    args: dict[str, Any]
    kid: str
    iat: float
    exp: float


class Refused(EdgeAgentError):
    """A command that is not executed; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str, *, jti: str | None = None, cmd: str | None = None,
                 kid: str | None = None, result: Any = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.jti, self.cmd, self.kid, self.result = reason, detail, jti, cmd, kid, result


# -- keys -------------------------------------------------------------------------------------
def kid_of(path: Path) -> str:
    """A trusted key's kid: its file name without the extension (platform.pub -> platform)."""
    return path.name.split(".", 1)[0] if not path.name.startswith(".") else path.name


def load_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; ValueError/OSError saying why not."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = path.read_bytes()
    try:
        key = load_pem_public_key(data)
    except ValueError:
        if b"PRIVATE KEY" in data:
            raise ValueError("is a private key: give the public key (never put the platform's "
                             "private key on a gateway)") from None
        raise ValueError("is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"is not an Ed25519 key ({type(key).__name__.removeprefix('_')})")
    return key


def _key_problems(paths: list[Path]) -> tuple[dict[str, Ed25519PublicKey], list[tuple[str, str]]]:
    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[tuple[str, str]] = []
    for i, p in enumerate(paths):
        where = f"commands.trusted_keys[{i}]"
        kid = kid_of(p)
        if not re.fullmatch(KID, kid):
            problems.append((where, f"{p}: file name {kid!r} is not a usable kid (letters, digits . _ -)"))
            continue
        if kid in keys:
            problems.append((where, f"{p}: kid {kid!r} is given twice (kid = file name without extension)"))
            continue
        try:
            keys[kid] = load_key(p)
        except FileNotFoundError:
            problems.append((where, f"file not found: {p}"))
        except OSError as e:
            problems.append((where, f"cannot read {p}: {e.strerror}"))
        except ValueError as e:
            problems.append((where, f"{p} {e}"))
    return keys, problems


class _CommandsSection(Protocol):
    @property
    def trusted_keys(self) -> list[Path]: ...
    @property
    def allow(self) -> list[str] | None: ...


class HasCommands(Protocol):
    """What the checks read of the config (`AgentConfig`; a protocol so that this needs no config import)."""

    @property
    def commands(self) -> _CommandsSection | None: ...


def check_commands(cfg: HasCommands, *, check_files: bool = True) -> list[tuple[str, str]]:
    """`[commands]` problems: unknown verbs in allow; unreadable or non-Ed25519 keys."""
    c = cfg.commands
    if c is None:
        return []
    out = [(f"commands.allow[{i}]", f"unknown verb {v!r} (known: {', '.join(VERBS)})")
           for i, v in enumerate(c.allow or []) if v not in VERBS]
    if check_files:
        out += _key_problems(c.trusted_keys)[1]
    return out


def load_trusted_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """kid -> key; ConfigError naming every bad key."""
    keys, problems = _key_problems(paths)
    if problems:
        raise ConfigError([f"{k}: {m}" for k, m in problems])
    return keys


# -- verification -----------------------------------------------------------------------------
class RateLimiter:
    """Token bucket: `rate` per second, `burst` at once."""

    def __init__(self, rate: float = RATE, burst: int = BURST) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Verifier:
    """Checks one P/commands payload; a Command or Refused. Pure: no I/O, no replay memory."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], gateway: str, *, max_lifetime: float,
                 allow: list[str] | None = None) -> None:
        self.keys, self.gateway, self.max_lifetime = keys, gateway, max_lifetime
        self.allow = frozenset(VERBS if allow is None else allow)

    def verify(self, payload: bytes, *, retained: bool = False, clock_synced: bool = True,
               now: float | None = None) -> Command:
        import jwt

        now = time.time() if now is None else now
        if len(payload) > MAX_PAYLOAD:
            raise Refused("oversize", f"{len(payload)} bytes (at most {MAX_PAYLOAD})")
        token, header, claimed = _parse(payload)
        if retained:
            raise Refused("retained", "commands must not be retained messages (the broker replays those)", **claimed)
        if isinstance(header, str):
            raise Refused("malformed", header)
        kid = header.get("kid")
        alg = header.get("alg")
        if alg != "EdDSA":
            raise Refused("bad_alg", f"alg {str(alg)[:16]!r} is not accepted (only EdDSA)", **claimed)
        if not isinstance(kid, str):
            raise Refused("unknown_kid", "the header has no kid", **claimed)
        key = self.keys.get(kid)
        if key is None:
            raise Refused("unknown_kid", f"kid {kid[:64]!r} is not a trusted key", **claimed)
        try:
            claims = jwt.decode(
                token, key, algorithms=["EdDSA"], audience=self.gateway, leeway=LEEWAY,
                options={"require": ["aud", "exp", "iat", "jti"], "strict_aud": True,
                         "verify_exp": clock_synced, "verify_iat": clock_synced, "verify_nbf": clock_synced},
            )
        except jwt.InvalidSignatureError:
            raise Refused("bad_signature", f"signature does not verify with key {kid!r}", **claimed) from None
        except jwt.ExpiredSignatureError:
            raise Refused("expired", "exp is in the past", **claimed) from None
        except jwt.ImmatureSignatureError as e:
            raise Refused("not_yet_valid", str(e), **claimed) from None
        except jwt.InvalidAudienceError:
            raise Refused("wrong_aud", f"aud is not {self.gateway!r}", **claimed) from None
        except jwt.InvalidAlgorithmError as e:
            raise Refused("bad_alg", str(e), **claimed) from None
        except jwt.PyJWTError as e:  # missing claims, bad types, bad JSON
            raise Refused("malformed", str(e), **claimed) from None
        jti, cmd, args = claims.get("jti"), claims.get("cmd"), claims.get("args", {})
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(jti, str) or not 1 <= len(jti) <= JTI_MAX:
            raise Refused("malformed", f"jti must be a string of 1..{JTI_MAX} characters", kid=kid)
        if not isinstance(cmd, str):
            raise Refused("malformed", "cmd must be a string", **claimed)
        ids: dict[str, Any] = {"kid": kid, "jti": jti, "cmd": cmd[:64]}
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (exp, iat)):
            raise Refused("malformed", "exp and iat must be numbers", **ids)
        if not isinstance(args, dict):
            raise Refused("malformed", "args must be an object", **ids)
        if exp - iat > self.max_lifetime:
            raise Refused("lifetime_too_long", f"exp - iat = {exp - iat:.0f} s (at most {self.max_lifetime:.0f} s)",
                          **ids)
        if exp <= iat:
            raise Refused("malformed", "exp must be after iat", **ids)
        if cmd not in VERBS:
            raise Refused("unknown_verb", f"unknown verb {cmd[:64]!r} (known: {', '.join(VERBS)})", **ids)
        if cmd not in self.allow:
            raise Refused("not_allowed", f"{cmd} is not in commands.allow", **ids)
        if not clock_synced and cmd not in READ_ONLY:
            raise Refused("clock_unsynced", "the gateway's clock is not synchronised: exp cannot be checked, "
                          f"only read-only verbs are accepted ({', '.join(sorted(READ_ONLY))})", **ids)
        return Command(jti=jti, cmd=cmd, args=args, kid=kid, iat=float(iat), exp=float(exp))


def _parse(payload: bytes) -> tuple[str, dict[str, Any] | str, dict[str, Any]]:
    """Token text, its header (or why it is none), and jti/cmd/kid as claimed (unverified)."""
    import jwt

    try:
        token = payload.decode("ascii").strip()
        header = jwt.get_unverified_header(token)
    except (UnicodeDecodeError, jwt.DecodeError) as e:
        return "", f"not a compact JWS: {e}", {}
    kid = header.get("kid")
    return token, header, {**_ids(token), "kid": kid[:64] if isinstance(kid, str) else None}


def claimed_ids(payload: bytes) -> dict[str, Any]:
    """jti, cmd and kid as a payload claims them, unverified: echoed in a refusal so the sender can match it."""
    return _parse(payload)[2] if len(payload) <= MAX_PAYLOAD else {}


def _ids(token: str) -> dict[str, Any]:
    """jti and cmd as a token claims them, unverified (only echoed in a refusal); {} if unreadable."""
    import jwt

    try:
        c = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    if not isinstance(c, dict):
        return {}
    jti, cmd = c.get("jti"), c.get("cmd")
    return {"jti": jti[:JTI_MAX] if isinstance(jti, str) else None, "cmd": cmd[:64] if isinstance(cmd, str) else None}


# -- results ----------------------------------------------------------------------------------
def result_message(gateway: str, *, jti: str | None, cmd: str | None, kid: str | None, status: str,
                   reason: str | None = None, detail: str = "", result: Any = None,
                   ts: float | None = None) -> dict[str, Any]:
    """The `P/commands/result` body (schema: docs/schema/command_result.schema.json)."""
    return {"v": 1, "gateway": gateway, "jti": jti, "cmd": cmd, "kid": kid, "status": status, "reason": reason,
            "detail": detail[:500], "result": result, "ts": format_ts(time.time() if ts is None else ts)}


# -- the store: replay memory + audit log ---------------------------------------------------------
AUDIT_KEEP = 10_000  # newest audit rows kept


def store_path(buffer_path: Path) -> Path:
    """The commands database: beside the buffer database (`buffer.path`)."""
    return Path(buffer_path).with_name("commands.db")


class CommandStore:
    """SQLite file (commands.db): seen jtis until their exp, and the audit log with its delivery state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.quarantined: Path | None = None
        self.quarantine_reason = ""
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as e:  # a corrupt file must not keep the agent from starting
            self.quarantined = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    src.replace(Path(f"{self.quarantined}{suffix}"))
            self.db = self._open()
            # the replay memory is gone: nothing issued before now can be told from a replay
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('replay_floor', ?)", (str(time.time()),))
            self.quarantine_reason = str(e)
        row = self.db.execute("SELECT value FROM meta WHERE key = 'replay_floor'").fetchone()
        self.replay_floor = float(row[0]) if row else 0.0

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if (ok := db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript("""
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS jti (jti TEXT PRIMARY KEY, exp REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS audit (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, jti TEXT, cmd TEXT, kid TEXT,
                    status TEXT NOT NULL, reason TEXT, detail TEXT NOT NULL DEFAULT '', message TEXT NOT NULL,
                    sent INTEGER NOT NULL DEFAULT 0);
                CREATE INDEX IF NOT EXISTS audit_unsent ON audit (sent) WHERE sent = 0;
            """)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def claim(self, jti: str, exp: float) -> bool:
        """Remember `jti` until `exp`; False when it was already seen (a replay)."""
        with self._lock:
            cur = self.db.execute("INSERT OR IGNORE INTO jti (jti, exp) VALUES (?, ?)", (jti, exp))
            return cur.rowcount == 1

    def prune(self, now: float) -> int:
        """Forget jtis whose exp has passed (call only with a synchronised clock) and old audit rows."""
        with self._lock:
            n = self.db.execute("DELETE FROM jti WHERE exp < ?", (now - LEEWAY,)).rowcount
            self.db.execute("DELETE FROM audit WHERE sent = 1 AND id <= (SELECT MAX(id) FROM audit) - ?",
                            (AUDIT_KEEP,))
            return n

    def record(self, msg: dict[str, Any]) -> int:
        """Append a result to the audit log (to be published); its id."""
        text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, default=str)
        with self._lock:
            cur = self.db.execute(
                "INSERT INTO audit (ts, jti, cmd, kid, status, reason, detail, message) VALUES (?,?,?,?,?,?,?,?)",
                (time.time(), msg["jti"], msg["cmd"], msg["kid"], msg["status"], msg["reason"], msg["detail"], text))
            return int(cur.lastrowid or 0)

    def unsent(self, limit: int = 50) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self.db.execute("SELECT id, message FROM audit WHERE sent = 0 ORDER BY id LIMIT ?",
                                   (limit,)).fetchall()
        return [(int(i), str(m).encode()) for i, m in rows]

    def mark_sent(self, row_id: int) -> None:
        with self._lock:
            self.db.execute("UPDATE audit SET sent = 1 WHERE id = ?", (row_id,))


def read_audit(path: Path, limit: int = 20) -> list[dict[str, Any]]:
    """The newest audit rows, newest last (read-only; works while the agent runs)."""
    rows: list[Any] = []
    for params in ("mode=ro", "mode=ro&immutable=1"):  # immutable: a technician who may not write the -shm
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?{params}", uri=True, timeout=5.0)
        try:
            rows = db.execute("SELECT ts, jti, cmd, kid, status, reason, detail, sent, message FROM audit "
                              "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            break
        except sqlite3.OperationalError as e:
            # a plain SQL error (no audit table yet) is the file's answer, not an access problem
            if e.sqlite_errorcode == sqlite3.SQLITE_ERROR or params.endswith("immutable=1"):
                raise
        finally:
            db.close()
    out = []
    for ts, jti, cmd, kid, status, reason, detail, sent, message in reversed(rows):
        out.append({"ts": format_ts(ts), "jti": jti, "cmd": cmd, "kid": kid, "status": status, "reason": reason,
                    "detail": detail, "published": bool(sent), "result": json.loads(message).get("result")})
    return out
