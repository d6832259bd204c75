"""Command verification (agent/commands.py), its replay store, config.apply's files, [commands] config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import (
    MAX_PAYLOAD,
    CommandStore,
    RateLimiter,
    Refused,
    Verifier,
    load_trusted_keys,
    result_message,
)
from agent.confirm import Pending, keep_version, pending_path, recover, sha256_hex, take_interrupted, write_pending
from agent.contract import validate
from tests.support.cli import run_cli
from tests.support.platform import b64, hs256_token, make_key, none_token

GW = "gw-test"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path]:
    d = tmp_path_factory.mktemp("keys")
    return make_key(d), d


@pytest.fixture
def verifier(keys: tuple[Ed25519PrivateKey, Path]) -> Verifier:
    return Verifier(load_trusted_keys([keys[1] / "platform.pub"]), GW, max_lifetime=3600,
                    allow=["ping", "status", "config.apply", "uplink.reconnect"])


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"aud": GW, "iat": now, "exp": now + 300, "jti": "j-1", "cmd": "ping", "args": {}}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(key: Ed25519PrivateKey, c: dict[str, Any], kid: str = "platform") -> bytes:
    return jwt.encode(c, key, algorithm="EdDSA", headers={"kid": kid}).encode()


def test_a_good_command_verifies(keys: tuple[Ed25519PrivateKey, Path], verifier: Verifier) -> None:
    cmd = verifier.verify(sign(keys[0], claims(cmd="config.apply", args={"base": "x"})))
    assert (cmd.jti, cmd.cmd, cmd.args, cmd.kid) == ("j-1", "config.apply", {"base": "x"}, "platform")


def refusal_cases(key: Ed25519PrivateKey, pub_pem: bytes) -> list[tuple[str, bytes, dict[str, Any]]]:
    other = Ed25519PrivateKey.generate()
    now = int(time.time())
    return [
        ("bad_signature", sign(other, claims()), {}),
        ("unknown_kid", sign(key, claims(), kid="someone"), {}),
        ("unknown_kid", jwt.encode(claims(), key, algorithm="EdDSA").encode(), {}),
        ("bad_alg", none_token(claims()).encode(), {}),
        ("bad_alg", hs256_token(claims(), pub_pem).encode(), {}),  # HMAC keyed with the public key
        ("wrong_aud", sign(key, claims(aud="gw-other")), {}),
        ("wrong_aud", sign(key, claims(aud=[GW, "gw-other"])), {}),
        ("expired", sign(key, claims(iat=now - 600, exp=now - 300)), {}),
        ("not_yet_valid", sign(key, claims(iat=now + 600, exp=now + 900)), {}),
        ("lifetime_too_long", sign(key, claims(exp=now + 7200)), {}),
        ("malformed", sign(key, claims(jti=None)), {}),
        ("malformed", sign(key, claims(exp=None)), {}),
        ("malformed", sign(key, claims(cmd=7)), {}),
        ("malformed", sign(key, claims(args=[1])), {}),
        ("malformed", b"not a token", {}),
        ("malformed", b"\xff\xfe", {}),
        ("malformed", b"", {}),
        ("unknown_verb", sign(key, claims(cmd="reboot")), {}),
        ("not_allowed", sign(key, claims(cmd="device.restart")), {}),
        ("clock_unsynced", sign(key, claims(cmd="uplink.reconnect")), {"clock_synced": False}),
        ("oversize", sign(key, claims(args={"pad": "x" * MAX_PAYLOAD})), {}),
        ("retained", sign(key, claims()), {"retained": True}),
    ]


def test_every_refusal_has_its_reason(keys: tuple[Ed25519PrivateKey, Path], verifier: Verifier) -> None:
    pub_pem = (keys[1] / "platform.pub").read_bytes()
    for reason, payload, kw in refusal_cases(keys[0], pub_pem):
        with pytest.raises(Refused) as e:
            verifier.verify(payload, **kw)
        assert e.value.reason == reason, (reason, e.value)


def test_unsynced_clock_accepts_read_only_verbs_without_checking_exp(
        keys: tuple[Ed25519PrivateKey, Path], verifier: Verifier) -> None:
    now = int(time.time())
    stale = sign(keys[0], claims(iat=now - 90000, exp=now - 86400))  # a day old: the clock may be off by that
    assert verifier.verify(stale, clock_synced=False).cmd == "ping"
    with pytest.raises(Refused, match="expired"):
        verifier.verify(stale, clock_synced=True)
    with pytest.raises(Refused) as e:  # lifetime is checked on the claims alone
        verifier.verify(sign(keys[0], claims(iat=now - 90000, exp=now)), clock_synced=False)
    assert e.value.reason == "lifetime_too_long"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_tokens_never_verify(keys: tuple[Ed25519PrivateKey, Path], verifier: Verifier,
                                    data: st.DataObject) -> None:
    """Mutations of a signed token verify only as the very claims that were signed; anything else is Refused."""
    good = sign(keys[0], claims(cmd="uplink.reconnect", jti="fuzz"))
    kind = data.draw(st.sampled_from(["flip", "splice", "bytes", "claims"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        payload = good[:i] + bytes([data.draw(st.integers(0, 255))]) + good[i + 1:]
    elif kind == "splice":
        head, body, sig = good.split(b".")
        evil = b64(json.dumps(data.draw(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                                                         max_size=6))).encode()).encode()
        payload = b".".join(data.draw(st.permutations([head, evil, sig])))
    elif kind == "claims":
        head, _, sig = good.split(b".")
        payload = head + b"." + b64(json.dumps(claims(cmd="config.apply", jti="fuzz")).encode()).encode() + b"." + sig
    else:
        payload = data.draw(st.binary(max_size=400))
    try:
        cmd = verifier.verify(payload)
    except Refused as e:
        assert e.reason in {"malformed", "bad_alg", "unknown_kid", "bad_signature", "oversize"} | {
            "wrong_aud", "expired", "not_yet_valid", "lifetime_too_long"}, e
        return
    assert (cmd.jti, cmd.cmd, cmd.args) == ("fuzz", "uplink.reconnect", {})  # only what was signed


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    r = RateLimiter(rate=5, burst=10)
    t = r.t = 1000.0
    assert [r.take(t) for _ in range(11)] == [True] * 10 + [False]
    assert r.take(t + 0.25) and not r.take(t + 0.25)  # 1.25 tokens came back
    assert [r.take(t + 100) for _ in range(11)] == [True] * 10 + [False]  # never more than the burst


def test_replay_store_survives_reopen_and_forgets_after_exp(tmp_path: Path) -> None:
    s = CommandStore(tmp_path / "commands.db")
    now = time.time()
    assert s.claim("a", now + 100) and not s.claim("a", now + 100)
    assert s.claim("b", now - 100)
    s.close()
    s = CommandStore(tmp_path / "commands.db")
    assert not s.claim("a", now + 100)
    assert s.prune(now) == 1  # b's exp (+ leeway) has passed
    assert s.claim("b", now + 100) and not s.claim("a", now + 100)
    s.close()


def test_result_message_matches_the_schema() -> None:
    for status, reason in (("ok", None), ("refused", "bad_signature"), ("rolled_back", "not_confirmed")):
        msg = result_message(GW, jti="j", cmd="ping", kid="platform", status=status, reason=reason,
                             detail="d", result={"pong": True})
        validate("commands/result", json.dumps(msg))
    validate("commands/result", json.dumps(result_message(GW, jti=None, cmd=None, kid=None, status="refused",
                                                          reason="malformed", detail="x")))


# -- config.apply's files -----------------------------------------------------------------------
def test_versions_are_kept_and_pruned(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("a")
    made = [keep_version(cfg, f"v{i}".encode(), keep=3) for i in range(5)]
    assert sorted(p.name for p in made[0].parent.iterdir()) == [p.name for p in made[2:]]
    assert [p.read_bytes() for p in made[2:]] == [b"v2", b"v3", b"v4"]


def test_recover_restores_the_previous_file_and_leaves_a_report(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("old")
    backup = keep_version(cfg, b"old", keep=5)
    p = Pending(jti="j", kid="platform", base=sha256_hex(b"old"), new=sha256_hex(b"new"), backup=str(backup),
                started=time.time())
    write_pending(cfg, p)
    cfg.write_text("new")
    assert recover(cfg) == p
    assert cfg.read_text() == "old" and not pending_path(cfg).exists()
    assert take_interrupted(cfg) == p
    assert recover(cfg) is None


# -- [commands] in the config ----------------------------------------------------------------------
def _cfg(tmp_path: Path, keys: str, extra: str = "") -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(f'[gateway]\nid = "gw-test"\n\n[commands]\ntrusted_keys = {keys}\n{extra}')
    return p


def test_bad_keys_exit_78_naming_the_key(tmp_path: Path) -> None:
    make_key(tmp_path)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(rsa_key.public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pub").write_bytes(ec_key.public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "junk.pub").write_text("hello")
    cases = {
        '["missing.pub"]': "commands.trusted_keys[0]: file not found",
        '["platform.pub", "rsa.pub"]': "commands.trusted_keys[1]:",
        '["ec.pub"]': "is not an Ed25519 key",
        '["junk.pub"]': "is not a PEM public key",
        '["platform.pem"]': "is a private key",
        '["platform.pub", "sub/platform.pub"]': "kid 'platform' is given twice",
    }
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "platform.pub").write_bytes((tmp_path / "platform.pub").read_bytes())
    for keys, want in cases.items():
        cfg = _cfg(tmp_path, keys)
        for argv in (("config", "check", cfg), ("run", "--config", cfg)):
            r = run_cli(*argv)
            assert r.code == 78, (keys, r)
            assert want in r.err and "(line 5)" in r.err, (keys, r.err)
    r = run_cli("config", "check", _cfg(tmp_path, '["platform.pub"]', 'allow = ["ping", "reboot"]'))
    assert r.code == 78 and "commands.allow[1]: unknown verb 'reboot'" in r.err
    assert run_cli("config", "check", _cfg(tmp_path, '["platform.pub"]')).code == 0


def test_a_corrupt_store_is_moved_aside_and_older_commands_count_as_replays(tmp_path: Path) -> None:
    path = tmp_path / "commands.db"
    s = CommandStore(path)
    assert s.quarantined is None and s.replay_floor == 0.0
    s.close()
    path.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)  # a torn file
    t0 = time.time()
    s = CommandStore(path)
    assert s.quarantined is not None and s.quarantined.read_bytes().startswith(b"SQLite format 3")
    assert t0 <= s.replay_floor <= time.time()
    assert s.claim("a", t0 + 100)
    s.close()
    s = CommandStore(path)  # the floor is kept: the old file's jtis stay unknown
    assert s.quarantined is None and t0 <= s.replay_floor and not s.claim("a", t0 + 100)
    s.close()
