"""Signed remote commands against the agent as a process, through a real Mosquitto broker."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands import BURST, MAX_PAYLOAD, read_audit, store_path
from agent.config import load_config
from agent.contract import validate
from agent.runtime import Agent
from tests.support.agentproc import AgentProcess, write_config
from tests.support.broker import Broker, free_port
from tests.support.cli import run_cli
from tests.support.platform import Platform, hs256_token, make_key, none_token
from tests.support.wait import until, wait_until

SIM = """
[[devices]]
id = "sim-gnss"
driver = "sim"
family = "nmea"
interval = "100ms"
"""

EXTRA_DEVICE = """
[[devices]]
id = "sim-pm"
driver = "sim"
family = "pms5003"
interval = "100ms"
"""


class Gateway:
    """An agent process with [commands], its config and a platform talking to it."""

    def __init__(self, tmp: Path, broker: Broker, *, commands: str = "", devices: str = SIM,
                 clock: str = "synced") -> None:
        self.dir, self.broker = tmp, broker
        self.key = make_key(tmp)
        self.commands = commands
        self.config = write_config(tmp / "agent.toml", broker_port=broker.port, devices=devices,
                                   extra=f'\n[commands]\ntrusted_keys = ["platform.pub"]\n{commands}\n')
        self.platform = Platform(self.key, broker.port)
        self.agent = AgentProcess(self.config, env={"EDGE_AGENT_CLOCK": clock})

    def start(self, clock: str | None = None, connects: int = 1) -> Gateway:
        if clock is not None:
            self.agent.env["EDGE_AGENT_CLOCK"] = clock
        self.agent.start()
        self.agent.wait_log("uplink: subscribed to edge/gw-test/commands", count=connects)
        return self

    def status(self) -> dict[str, Any]:
        r = run_cli("status", "--json", "--config", self.config)
        assert r.code in (0, 3, 4), r  # 3 degraded, 4 buffering (docs/CLI.md): the JSON says which
        return r.json()  # type: ignore[no-any-return]

    def audit(self) -> list[dict[str, Any]]:
        r = run_cli("commands", "--json", "-n", "1000", "--config", self.config)
        assert r.code == 0, r
        return r.json()["commands"]  # type: ignore[no-any-return]

    def births(self) -> int:
        return sum(1 for m in self.platform.sub.on("/status") if m.json()["state"] == "online")

    def sha(self) -> str:
        return hashlib.sha256(self.config.read_bytes()).hexdigest()

    def close(self) -> None:
        self.agent.close()
        self.platform.close()


@pytest.fixture
def gw(tmp_path: Path, broker: Broker) -> Iterator[Gateway]:
    g = Gateway(tmp_path, broker, commands='allow = ["ping", "status", "devices", "config.get", "config.apply", '
                                           '"uplink.reconnect", "buffer.stats"]\nconfirm_timeout = "4s"')
    yield g
    g.close()


def paced(send: Any) -> Any:
    """Stay under the documented rate limit (5/s, burst 10) where a test is not about it."""
    time.sleep(0.25)
    return send()


def test_every_refusal_has_its_reason_and_no_effect(gw: Gateway) -> None:
    p = gw.platform
    retained = p.claims("uplink.reconnect")
    p.send(p.token(retained), retain=True)  # already on the broker when the agent subscribes
    gw.start()
    assert p.result(retained["jti"])["reason"] == "retained"
    p.send(b"", retain=True)  # cleared (a zero-length message is not answered)
    other = make_key(gw.dir, "intruder")
    pub_pem = (gw.dir / "platform.pub").read_bytes()
    now = int(time.time())
    cases: list[tuple[str, dict[str, Any], Any]] = []

    def case(reason: str, claims: dict[str, Any], token: str | bytes) -> None:
        cases.append((reason, claims, token))

    for reason, over in (("wrong_aud", {"aud": "gw-other"}), ("expired", {"iat": now - 900, "exp": now - 600}),
                         ("lifetime_too_long", {"exp": now + 7200}), ("not_yet_valid", {"iat": now + 900}),
                         ("unknown_verb", {"cmd": "reboot"}), ("not_allowed", {"cmd": "device.restart"}),
                         ("malformed", {"args": "nope"})):
        c = {**p.claims("uplink.reconnect"), **over}
        case(reason, c, p.token(c))
    c = p.claims("uplink.reconnect")
    case("bad_signature", c, p.token(c, key=other))
    c = p.claims("uplink.reconnect")
    case("unknown_kid", c, p.token(c, key=other, kid="intruder"))
    c = p.claims("uplink.reconnect")
    case("bad_alg", c, none_token(c))
    c = p.claims("uplink.reconnect")
    case("bad_alg", c, hs256_token(c, pub_pem))
    for reason, claims, token in cases:
        paced(lambda t=token: p.send(t))
        r = p.result(claims["jti"])
        assert (r["status"], r["reason"]) == ("refused", reason), (reason, r)
        validate("commands/result", json.dumps(r))
    paced(lambda: p.send(b"x" * (MAX_PAYLOAD + 1)))
    paced(lambda: p.send(b"definitely not a JWT"))
    wait_until(lambda: len([r for r in p.results() if r["jti"] is None]) == 2, 20, "the two anonymous refusals")
    assert sorted(r["reason"] for r in p.results() if r["jti"] is None) == ["malformed", "oversize"]
    # replay: a good command once, then again
    good = p.claims("ping")
    paced(lambda: p.send(p.token(good)))
    assert p.result(good["jti"])["status"] == "ok"
    paced(lambda: p.send(p.token(good)))
    wait_until(lambda: [r["reason"] for r in p.results() if r["jti"] == good["jti"]] == [None, "replay"], 20,
               "the replay refusal")
    # nothing above reconnected the uplink; a good uplink.reconnect does
    assert gw.status()["uplink"]["reconnects"] == 0 and gw.births() == 1
    jti = paced(lambda: p.command("uplink.reconnect"))
    assert p.result(jti)["status"] == "ok"
    wait_until(lambda: gw.births() == 2, 20, "the reconnect's birth")
    assert gw.status()["uplink"]["reconnects"] == 1
    # audit log and events carry every command
    n = len(cases) + 1 + 2 + 2 + 1
    wait_until(lambda: len(p.events()) == n, 20, f"{n} command events")
    audit = gw.audit()
    assert len(audit) == n == len(p.results())
    assert [a["jti"] for a in audit] == [r["jti"] for r in p.results()]
    wait_until(lambda: all(a["published"] for a in gw.audit()), 20, "every result acknowledged in the audit log")
    assert {a["kid"] for a in audit if a["status"] == "ok"} == {"platform"}
    for e in p.events():
        validate("events", json.dumps(e))


def test_more_than_a_few_per_second_are_refused(gw: Gateway) -> None:
    from agent.model import parse_ts

    gw.start()
    p = gw.platform
    jtis = [p.claims("ping")["jti"] for _ in range(10 * BURST)]
    tokens = [p.token(p.claims("ping", jti=j)) for j in jtis]
    t0 = time.time()
    for t in tokens:
        p.send(t)
    # BURST at once, then 5/s; as many rate_limited answers; the rest of a flood is dropped unanswered
    gw.agent.wait_log("commands: flooded; 1 messages on P/commands dropped unanswered")
    wait_until(lambda: len(p.results()) >= 2 * BURST, 30, "the answers")
    results = p.results()
    assert {r["jti"] for r in results} <= set(jtis)
    statuses = [r["reason"] or r["status"] for r in results]
    ok, limited = statuses.count("ok"), statuses.count("rate_limited")
    assert len(statuses) == ok + limited

    def refilled(status: str) -> float:
        """Tokens the bucket can have regained: the agent takes one as a message arrives, before it
        answers, so its clock ran at most from the first send to the last such answer (a loaded agent
        takes in a flood more slowly than the test sends it)."""
        last = max(parse_ts(r["ts"]) for r, st in zip(results, statuses, strict=True) if st == status)
        return 5 * (last - t0 + 0.001)

    assert BURST <= ok <= BURST + refilled("ok") + 1, (ok, refilled("ok"))
    assert BURST <= limited <= BURST + refilled("rate_limited") + 1, (limited, refilled("rate_limited"))
    assert ok + limited < len(jtis)


def test_replay_after_restart_and_the_unsynced_clock_policy(gw: Gateway) -> None:
    gw.start()
    p = gw.platform
    c = p.claims("ping")
    p.send(p.token(c))
    assert p.result(c["jti"])["status"] == "ok"
    assert gw.agent.terminate() == 0
    p.sub.messages.clear()
    gw.start(clock="unsynced", connects=2)
    p.send(p.token(c))
    assert p.result(c["jti"])["reason"] == "replay"
    now = int(time.time())
    stale = p.claims("status", iat=now - 90_000, exp=now - 86_400)  # a day ago: the gateway cannot tell
    paced(lambda: p.send(p.token(stale)))
    r = p.result(stale["jti"])
    assert r["status"] == "ok" and r["result"]["clock"] == "unsynced"
    jti = paced(lambda: p.command("uplink.reconnect"))
    assert p.result(jti)["reason"] == "clock_unsynced"
    assert gw.status()["uplink"]["reconnects"] == 0


def seqs(p: Platform) -> list[int]:
    return sorted({r["seq"] for r in p.sub.readings()})


def test_config_apply_adding_a_device_is_confirmed_and_its_readings_arrive(gw: Gateway) -> None:
    gw.start()
    p = gw.platform
    base = gw.sha()
    get = p.command("config.get")
    r = p.result(get)
    assert r["result"]["sha256"] == base and r["result"]["config"]["gateway"]["id"] == "gw-test"
    new = gw.config.read_text() + EXTRA_DEVICE
    stale = paced(lambda: p.command("config.apply", {"config": new, "base": "0" * 64}))
    assert p.result(stale)["reason"] == "base_mismatch" and gw.sha() == base
    broken = new + ('\n[[devices]]\nid = "x"\ndriver = "warp"\n\n[[devices]]\nid = "y"\ndriver = "sim"\n'
                    'family = "nmea"\nport = "/dev/ttyUSB9"\n\n[uplink2]\n')  # sim reads no serial port
    bad = paced(lambda: p.command("config.apply", {"config": broken, "base": base}))
    r = p.result(bad)
    assert r["reason"] == "invalid_config" and gw.sha() == base
    assert any("unknown driver 'warp'" in x for x in r["result"]["problems"])
    assert any(x.startswith("uplink2: unknown key") for x in r["result"]["problems"])
    assert any(re.match(r"devices\[\d+\]\.port: not used by driver 'sim'", x) for x in r["result"]["problems"])
    make_key(gw.dir, "other")
    for text, problem in (
            (new.replace('trusted_keys = ["platform.pub"]', 'trusted_keys = ["other.pub"]'),
             "commands.trusted_keys: the new file does not trust the key that signed this config.apply"),
            (re.sub(r"\[commands\].*?(?=\[\[devices\]\])", "", new, flags=re.S),
             "commands: removing [commands] remotely would end remote management"),
            (new.replace("[buffer]", '[buffer]\nqueue_size = 5000'),
             "buffer.queue_size: takes effect only after a restart")):
        assert text != new
        locked = paced(lambda text=text: p.command("config.apply", {"config": text, "base": base}))
        r = p.result(locked)
        assert r["reason"] == "invalid_config" and any(x.startswith(problem) for x in r["result"]["problems"]), \
            r["result"]
    assert gw.sha() == base
    t0 = time.monotonic()
    jti = paced(lambda: p.command("config.apply", {"config": new, "base": base}))
    r = p.result(jti, timeout=30)
    assert r["status"] == "ok", r
    assert r["result"]["previous"] == base and r["result"]["sha256"] == gw.sha() != base
    assert time.monotonic() - t0 < 30
    assert gw.config.read_text() == new
    assert Path(r["result"]["backup"]).read_bytes().decode() + EXTRA_DEVICE == new
    wait_until(lambda: any(x["device"] == "sim-pm" for x in p.sub.readings()), 20, "readings of the new device")
    digests = [m.json()["config_digest"] for m in p.sub.on("/status") if m.json()["state"] == "online"]
    assert len(set(digests)) == 2 and digests[-1] == r["result"]["config_digest"]  # the birth tells the new config
    assert seqs(p) == list(range(1, seqs(p)[-1] + 1))
    assert "sim-pm" in gw.status()["devices"]


def test_config_apply_to_a_dead_port_rolls_back_and_loses_nothing(gw: Gateway) -> None:
    gw.start()
    p = gw.platform
    base = gw.sha()
    dead = free_port()
    new = gw.config.read_text().replace(f"port = {gw.broker.port}", f"port = {dead}")
    assert new != gw.config.read_text()
    wait_until(lambda: len(seqs(p)) > 5, 20, "readings before the change")
    t0 = time.monotonic()
    jti = p.command("config.apply", {"config": new, "base": base})
    r = p.result(jti, timeout=40)
    took = time.monotonic() - t0
    assert (r["status"], r["reason"]) == ("rolled_back", "not_confirmed"), r
    assert f"127.0.0.1:{dead}" in r["detail"], r
    assert 4 <= took < 4 + 20, took  # confirm_timeout, then a reconnect with the old settings
    assert gw.sha() == base
    at_rollback = gw.status()["buffer"]["next_seq"] - 1
    wait_until(lambda: len(seqs(p)) >= at_rollback, 30, "every reading of the window")
    got = seqs(p)
    assert got == list(range(1, got[-1] + 1))  # seq unbroken: nothing lost
    assert got[-1] >= at_rollback
    gaps = [e for e in p.events("gap")]
    assert gaps == []
    assert [a["status"] for a in gw.audit() if a["jti"] == jti] == ["rolled_back"]


def test_kill_9_in_the_confirm_window_ends_rolled_back(tmp_path: Path, broker: Broker) -> None:
    g = Gateway(tmp_path, broker, commands='confirm_timeout = "120s"')
    try:
        g.start()
        p = g.platform
        base = g.sha()
        new = g.config.read_text().replace(f"port = {broker.port}", f"port = {free_port()}")
        jti = p.command("config.apply", {"config": new, "base": base})
        g.agent.wait_log("confirming within")
        assert g.sha() != base and (tmp_path / "agent.toml.apply-pending").exists()
        g.agent.kill()
        g.start(connects=2)  # the previous config (the right port) runs
        assert g.sha() == base
        assert "was not confirmed before the agent stopped" in g.agent.output()
        r = p.result(jti, timeout=30)
        assert (r["status"], r["reason"]) == ("rolled_back", "interrupted"), r
        assert not (tmp_path / "agent.toml.apply-pending").exists()
        assert not (tmp_path / "agent.toml.apply-interrupted").exists()
        assert [a["status"] for a in g.audit() if a["jti"] == jti] == ["rolled_back"]
        wait_until(lambda: any(e["jti"] == jti and e["status"] == "rolled_back" for e in p.events()), 20,
                   "the rolled_back command event")
    finally:
        g.close()


async def test_a_second_config_apply_during_the_confirm_window_is_refused_busy(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two config.apply queued together: the second is refused `busy` naming the first, the file is the first's."""
    monkeypatch.setenv("EDGE_AGENT_CLOCK", "synced")
    key = make_key(tmp_path)
    cfg_path = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=SIM,
                            extra='\n[commands]\ntrusted_keys = ["platform.pub"]\nconfirm_timeout = "600s"\n')
    text, base = cfg_path.read_text(), hashlib.sha256(cfg_path.read_bytes()).hexdigest()
    first = text.replace(f"port = {broker.port}", f"port = {free_port()}")  # never confirms: the window stays open
    p = Platform(key, broker.port)
    agent = Agent(load_config(cfg_path))
    await agent.start()
    try:
        assert agent.commands is not None
        c1 = p.claims("config.apply", {"config": first, "base": base})
        c2 = p.claims("config.apply", {"config": text + EXTRA_DEVICE, "base": base})
        for c in (c1, c2):  # both queued before the worker takes the first: no race with its reload
            agent.commands.offer(p.token(c).encode(), False)
        audit = store_path(agent.cfg.buffer.path)
        await until(lambda: audit.exists() and any(r["jti"] == c2["jti"] for r in read_audit(audit)), 30,
                    "the second command's result")
        rows = {r["jti"]: r for r in read_audit(audit)}
        assert (rows[c2["jti"]]["status"], rows[c2["jti"]]["reason"]) == ("refused", "busy"), rows[c2["jti"]]
        assert f"config.apply {c1['jti']!r} is waiting for its confirmation" in rows[c2["jti"]]["detail"]
        assert c1["jti"] not in rows, "the first is still in its confirm window"
        assert cfg_path.read_text() == first
    finally:
        await agent.stop()
        p.close()


def test_cli_send_signs_and_waits_for_the_result(gw: Gateway) -> None:
    gw.start()
    common = ["command", "send", "--key", gw.dir / "platform.pem", "--gateway", "gw-test",
              "--broker", f"127.0.0.1:{gw.broker.port}"]
    r = run_cli(*common, "ping", "--json")
    assert r.code == 0, r
    assert r.json()["result"]["pong"] is True and r.json()["kid"] == "platform"
    new = gw.dir / "new.toml"
    new.write_text(gw.config.read_text() + EXTRA_DEVICE)
    r = run_cli(*common, "config.apply", "--config-file", new)
    assert r.code == 0, r
    assert "config.apply ok" in r.out and "base " in r.err
    assert gw.config.read_text() == new.read_text()
    r = run_cli(*common, "device.restart", "--arg", "device=sim-pm")
    assert r.code == 1 and "not_allowed" in r.err
    st = gw.status()["commands"]
    assert (st["trusted_kids"], st["received"], st["dropped"], st["applying"]) == (["platform"], 4, 0, None)
    assert (st["last"]["cmd"], st["last"]["status"], st["last"]["reason"]) == ("device.restart", "refused", "not_allowed")
    r = run_cli("status", "--config", gw.config)
    assert any(x.startswith("commands  on (keys platform); last: device.restart refused") for x in r.out.splitlines())
    # folded to 80 columns: compare the words
    assert "commands on (keys platform); last: device.restart refused (not_allowed) by platform" in " ".join(
        r.out.split()), r.out
    r = run_cli("commands", "--config", gw.config)
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split()[:4] == ["time", "verb", "signed", "by"]
    assert [ln.split()[2:5] for ln in lines[1:]] == [
        ["ping", "platform", "ok"], ["config.get", "platform", "ok"], ["config.apply", "platform", "ok"],
        ["device.restart", "platform", "refused"]]


def test_fuzzed_tokens_at_the_agent_never_execute_and_device_restart_works(tmp_path: Path, broker: Broker) -> None:
    import random

    g = Gateway(tmp_path, broker)  # every verb allowed
    try:
        g.start()
        p = g.platform
        rnd = random.Random(15)
        good = p.token(p.claims("uplink.reconnect")).encode()
        fuzz: list[bytes] = []
        for _ in range(20):
            b = bytearray(good)
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            if bytes(b) != good:
                fuzz.append(bytes(b))
        for f in fuzz:
            paced(lambda f=f: p.send(f))
        wait_until(lambda: len(p.results()) == len(fuzz), 30, "every fuzzed token answered")
        assert {r["status"] for r in p.results()} == {"refused"}
        assert g.status()["uplink"]["reconnects"] == 0 and g.births() == 1
        before = g.status()["devices"]["sim-gnss"]["readings"]
        jti = paced(lambda: p.command("device.restart", {"device": "sim-gnss"}))
        r = p.result(jti)
        assert (r["status"], r["result"]) == ("ok", {"device": "sim-gnss", "restarted": True})
        # a new runner counts from 0 (the old one had `before` > 20 readings after the fuzzing above)
        assert before > 20
        wait_until(lambda: g.status()["devices"]["sim-gnss"]["readings"] < before, 20, "a fresh driver run")
        wait_until(lambda: g.status()["devices"]["sim-gnss"]["online"], 20, "the device back online")
        jti = paced(lambda: p.command("device.restart", {"device": "nope"}))
        assert p.result(jti)["reason"] == "bad_args"
    finally:
        g.close()
