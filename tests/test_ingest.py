"""`edge-agent ingest`: real Mosquitto (MQTT 5 shared subscriptions) -> instances -> real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.ingest import IngestProcess, Publisher, ReplayGateway
from tests.support.postgres import Postgres, query
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres().start()
    yield server
    server.close()


class Fleet:
    """Ingest instances of one group; closed (killed) at the end of the test."""

    def __init__(self, db: str, port: int, workdir: Path) -> None:
        self.db, self.port, self.dir = db, port, workdir
        self.procs: list[IngestProcess] = []

    def start(self, n: int, *extra: str) -> list[IngestProcess]:
        new = [IngestProcess(self.db, self.port, self.dir, f"ingest-{len(self.procs) + i + 1}", *extra)
               for i in range(n)]
        for p in new:
            p.start()
        for p in new:
            p.wait_log("subscribed to")
        self.procs += new
        return new

    def close(self) -> None:
        for p in self.procs:
            p.close()


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Fleet] = []

    def make(db: str, port: int) -> Fleet:
        f = Fleet(db, port, tmp_path)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "ingest", *args], capture_output=True, text=True,
                          timeout=60)


def report(db: str, *args: str) -> tuple[int, dict[str, Any]]:
    r = cli("report", "--db", db, "--json", *args)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def count(db: str) -> int:
    return int(query(db, "SELECT count(*) FROM readings")[0][0])


def wait_rows(db: str, n: int, timeout: float = 60.0) -> None:
    wait_until(lambda: count(db) >= n, timeout, f"{n} readings in the table (have {count(db)})")


def keys(db: str) -> list[tuple[str, int]]:
    return [(g, s) for g, s in query(db, "SELECT gateway, seq FROM readings ORDER BY gateway, seq")]


def gateways(tmp_path: Path, n: int, readings: int, **outbox: Any) -> list[ReplayGateway]:
    gws = [ReplayGateway(tmp_path, f"gw-{i:02d}", **outbox) for i in range(n)]
    for g in gws:
        g.accept(readings)
    return gws


def interleave(gws: list[ReplayGateway]) -> list[tuple[str, bytes]]:
    """Every gateway's messages, round robin (each gateway's own in order), as a city would send them."""
    per = [g.messages() for g in gws]
    return [m for i in range(max(map(len, per))) for ms in per if i < len(ms) for m in [ms[i]]]


def test_init_creates_then_keeps_the_schema_and_ingest_refuses_a_bare_database(pg: Postgres, tmp_path: Path,
                                                                               broker: Broker) -> None:
    db = pg.new_database(init=False)
    r = cli("--db", db, "--broker", f"mqtt://127.0.0.1:{broker.port}")
    assert r.returncode == 1 and "has no edge-agent schema" in r.stderr and "ingest --init" in r.stderr
    assert cli("--init", "--db", db).stdout.strip() == "schema created (version 1)"
    assert cli("--init", "--db", db).stdout.strip() == "schema is up to date (version 1)"
    rc, rep = report(db)
    assert rc == 0 and rep["received"] == 0 and rep["ok"] is True
    r = subprocess.run([sys.executable, "-m", "agent", "ingest", "report"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "EDGE_INGEST_DB" in r.stderr


def test_three_instances_twenty_gateways_one_killed_mid_stream_every_seq_once(
        pg: Postgres, broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    db = pg.new_database()
    fleet = fleet_factory(db, broker.port)
    ingest = fleet.start(3, "--batch", "50", "--max-inflight", "40")
    gws = gateways(tmp_path, 20, 300)
    msgs = interleave(gws)  # 20 x 15 telemetry messages of 20 readings
    pub = Publisher(broker.port)
    halfway = threading.Event()
    sender = threading.Thread(target=pub.send, args=(msgs, 120.0, halfway))
    sender.start()
    assert halfway.wait(30)
    victim = ingest[1]
    victim.kill()  # kill -9 mid-stream: its uncommitted / unacknowledged messages stay in its session
    victim.start_subscribed()  # same client id: resumes the session, gets them again
    sender.join(60)
    pub.close()
    wait_rows(db, 20 * 300)
    assert keys(db) == sorted((g.gateway, s) for g in gws for s in range(1, 301))
    rc, rep = report(db, "--since-epoch-start")
    assert (rep["received"], rep["missing"], rep["unexplained"], rep["conflicts"], rep["invalid"]) == (6000, 0, 0, 0, 0)
    assert rep["gateways"] == 20 and len(rep["epochs"]) == 20 and rc == 0 and rep["ok"]
    assert all(p.alive() for p in ingest)
    # The stream really was shared: every instance wrote readings.
    shared = query(db, "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
                       "WHERE application_name LIKE 'edge-agent ingest %%'")[0][0]
    assert shared == 3
    for g in gws:
        g.close()


def test_postgres_restart_mid_stream_loses_nothing_and_instances_recover(
        broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    server = Postgres().start()  # its own folder: pytest's tmp_path is not reachable by the server's user
    try:
        db = server.new_database()
        ingest = fleet_factory(db, broker.port).start(2, "--batch", "20")
        gws = gateways(tmp_path, 5, 400)
        pub = Publisher(broker.port)
        halfway = threading.Event()
        sender = threading.Thread(target=pub.send, args=(interleave(gws), 60.0, halfway))
        sender.start()
        assert halfway.wait(30)
        server.stop("immediate")  # a crash: in-flight transactions die, committed ones survive recovery
        for p in ingest:
            p.wait_log("retrying in")
        server.start()
        sender.join(60)
        pub.close()
        wait_rows(db, 5 * 400)
        assert keys(db) == sorted((g.gateway, s) for g in gws for s in range(1, 401))
        rc, rep = report(db, "--since-epoch-start")
        assert rc == 0 and rep["ok"] and (rep["received"], rep["unexplained"]) == (2000, 0)
        assert all(p.alive() for p in ingest)
        for g in gws:
            g.close()
    finally:
        server.close()


def test_overflow_gap_balances_exactly_and_a_redelivered_gap_is_a_duplicate(
        pg: Postgres, broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    from agent.buffer import ROW_OVERHEAD
    from agent.model import encode_reading
    from tests.support.ingest import reading

    db = pg.new_database()
    fleet_factory(db, broker.port).start(2)
    size = len(encode_reading(1, reading(1))) + ROW_OVERHEAD
    gw = ReplayGateway(tmp_path, "gw-van-3", max_bytes=50 * size)
    gw.accept(200)  # the broker was away: the buffer holds ~50, the oldest were dropped with a gap event
    msgs = gw.messages()
    gap = json.loads(msgs[-1][1])
    assert gap["type"] == "gap" and gap["from_seq"] == 1 and gap["count"] > 100
    lost = gap["count"]
    pub = Publisher(broker.port)
    pub.send([*msgs, msgs[-1]])  # the gap event once more, as after a lost PUBACK
    wait_rows(db, 200 - lost)
    wait_until(lambda: report(db)[1]["gap_duplicates"] == 1, 30, "the repeated gap counted as a duplicate")
    pub.close()
    rc, rep = report(db, "--since-epoch-start", "--gateway", "gw-van-3")
    e = rep["epochs"][0]
    assert (e["received"], e["missing"], e["gap_readings"], e["unexplained"], e["gap_balance"]) == \
        (200 - lost, lost, lost, 0, 0)
    assert rc == 0 and rep["ok"] and rep["gaps"] == 1
    assert query(db, "SELECT from_seq, to_seq, count, reason FROM gaps") == \
        [(gap["from_seq"], gap["to_seq"], lost, "buffer_full")]
    gw.close()


def test_forged_redelivery_with_different_content_is_a_conflict_and_the_original_stays(
        pg: Postgres, broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    db = pg.new_database()
    fleet_factory(db, broker.port).start(2)
    gw = ReplayGateway(tmp_path, "gw-a101")
    gw.accept(10)
    msgs = gw.messages()
    topic, payload = msgs[0]
    forged = payload.replace(b'"co2":405', b'"co2":999')
    assert forged != payload
    pub = Publisher(broker.port)
    pub.send(msgs)
    wait_rows(db, 10)
    pub.send([(topic, forged), (topic, payload)])  # a forged copy, then an honest redelivery
    wait_until(lambda: query(db, "SELECT count(*) FROM conflicts")[0][0] == 1, 30, "the conflict row")
    # the forged copy's 9 other readings and the honest copy's 10 are identical redeliveries
    wait_until(lambda: report(db)[1]["duplicates"] == 19, 30, "19 duplicates")
    pub.close()
    (kind, gateway, seq, text), = query(db, "SELECT kind, gateway, seq, payload FROM conflicts")
    assert (kind, gateway, seq) == ("reading", "gw-a101", 6) and json.loads(text)["values"]["co2"] == 999
    assert query(db, """SELECT "values"->>'co2' FROM readings WHERE seq = 6""") == [("405",)]
    rc, rep = report(db)
    assert rc == 1 and not rep["ok"] and (rep["conflicts"], rep["received"], rep["duplicates"]) == (1, 10, 19)
    assert "conflicts 1" in cli("report", "--db", db).stdout
    gw.close()


def test_invalid_messages_are_counted_and_never_stop_an_instance(
        pg: Postgres, broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    db = pg.new_database()
    (one,) = fleet_factory(db, broker.port).start(1)
    gw = ReplayGateway(tmp_path, "gw-b")
    gw.accept(3)
    good = gw.messages()
    bad_month = good[0][1].replace(b'"seq":1,', b'"seq":7,').replace(b"-09-", b"-13-")  # passes the schema regex
    assert bad_month != good[0][1]
    huge_seq = good[0][1].replace(b'"seq":1,', b'"seq":99999999999999999999,')
    bad = [
        ("edge/gw-b/telemetry", b"not json"),
        ("edge/gw-b/telemetry", b'{"v":2,"gateway":"gw-b"}'),
        ("edge/gw-b/firmware", b"{}"),
        ("edge/gw-b/events", b'{"v":1,"type":"gap","epoch":"0123456789abcdef","from_seq":5,"to_seq":4,'
                             b'"count":1,"reason":"max_age","ts":"2026-11-27T07:24:31.123Z"}'),
        ("edge/gw-b/telemetry", bad_month),  # the database refuses the timestamp
        ("edge/gw-b/telemetry", huge_seq),  # beyond bigint
    ]
    pub = Publisher(broker.port)
    command = ("edge/gw-b/commands", b"eyJhbGciOiJFZERTQSJ9.e30.c2ln")  # the platform's own: neither stored nor invalid
    pub.send([command, *bad, *good, bad[0]])  # the last: an identical redelivery of an invalid message
    wait_rows(db, 3)
    wait_until(lambda: report(db)[1]["invalid"] == len(bad), 30, f"{len(bad)} invalid rows")
    pub.close()
    assert one.alive()
    errors = [e for (e,) in query(db, "SELECT error FROM invalid ORDER BY id")]
    assert any("database refused it" in e for e in errors), errors
    assert any("unknown topic" in e for e in errors)
    rc, rep = report(db)
    assert rc == 1 and rep["received"] == 3 and rep["invalid"] == len(bad)
    gw.close()


def test_the_gateway_side_never_imports_the_database_driver() -> None:
    code = ("import sys, agent.cli.main as m, agent.runtime, agent.uplink; m.build_parser(); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('psycopg', 'agent') and "
            "(k.startswith('psycopg') or k.startswith('agent.ingest'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_slow_database_holds_back_the_broker_not_our_memory(broker: Broker, pg: Postgres, tmp_path: Path) -> None:
    """Receive Maximum: with the database unreachable, at most --max-inflight messages come to us."""
    from agent.ingest.service import Ingestor, Settings
    from agent.mosquitto import free_port

    db = pg.new_database()
    dead = db.replace(f":{pg.port}/", f":{free_port()}/")  # nothing listens there: connections are refused
    ing = Ingestor(Settings(db=dead, port=broker.port, client_id="bp-1", group="bp", max_inflight=10))
    t = threading.Thread(target=ing.run)
    t.start()
    try:
        assert ing.subscribed.wait(20)
        gw = ReplayGateway(tmp_path, "gw-slow")
        gw.accept(2000)
        msgs = gw.messages()
        assert len(msgs) == 100
        pub = Publisher(broker.port)
        pub.send(msgs)  # the broker took them all
        wait_until(lambda: ing.q.qsize() + ing.in_hand == 10, 20, "the window to fill")
        for _ in range(50):  # and stay full, not more, while the writer retries
            assert ing.q.qsize() + ing.in_hand <= 10
            threading.Event().wait(0.02)
        ing.s = Settings(**{**{f: getattr(ing.s, f) for f in Settings.__slots__}, "db": db})  # the database is back
        wait_rows(db, 2000)
        assert keys(db) == [("gw-slow", s) for s in range(1, 2001)]
        pub.close()
        gw.close()
    finally:
        ing.stop.set()
        t.join(20)
    assert not t.is_alive()


def test_a_real_agent_end_to_end_with_an_overflow_gap_while_the_broker_was_down(
        pg: Postgres, tmp_path: Path, pty_factory: Any, fleet_factory: Any) -> None:
    """Agent process (NMEA on a pty) -> persistent Mosquitto -> 2 instances -> PostgreSQL: every seq once or in a gap."""
    import itertools
    import signal

    from drivers.nmea.simulator import epoch_bytes, fixes
    from tests.support.agentproc import AgentProcess, nmea_device, write_config
    from tests.support.receiver import persistent_broker
    from tests.test_platform_e2e import buffer_state

    db = pg.new_database()
    broker = persistent_broker().start()
    dev = pty_factory()
    src = (epoch_bytes(f) for f in fixes(start=1_790_000_000.0))
    cfg = write_config(tmp_path / "agent.toml", broker_port=broker.port, devices=nmea_device(dev.port),
                       buffer="max_bytes = 3000", uplink='health_interval = "300ms"')
    agent = AgentProcess(cfg)
    try:
        ingest = fleet_factory(db, broker.port).start(2)
        agent.start_and_wait_port()
        for b in itertools.islice(src, 5):
            dev.write(b)
        wait_rows(db, 5, 30)
        broker.stop()  # the sessions (and what is queued for them) survive: persistence
        for b in itertools.islice(src, 60):
            dev.write(b)
        agent.wait_log("buffer: dropped")
        wait_until(lambda: buffer_state(tmp_path / "buffer.db")[0] == 65, 30, "65 accepted")
        # Mosquitto 2.0 does not restore shared subscriptions from its persistence file: until the
        # instances have subscribed again it drops what only the group would get (docs/PLATFORM.md).
        # So the gateway waits (SIGSTOP) until they are back, as the doc's broker restart procedure says.
        agent.signal(signal.SIGSTOP)
        broker.start()
        for p in ingest:
            p.wait_log("subscribed to", count=2)
        agent.signal(signal.SIGCONT)

        last: list[dict[str, Any]] = []

        def settled() -> bool:
            last[:] = [report(db, "--since-epoch-start")[1]]
            return last[0]["received"] + last[0]["gap_readings"] == 65 and last[0]["unexplained"] == 0
        try:
            wait_until(settled, 60, "all 65 seqs received or inside a gap")
        except AssertionError:
            raise AssertionError(f"{last[0]['epochs']}\n{agent.output()[-3000:]}") from None
        assert agent.terminate() == 0
        wait_until(lambda: query(db, "SELECT state, reason FROM status") == [("offline", "shutdown")], 30,
                   "the clean shutdown in status")
        rc, rep = report(db, "--since-epoch-start")
        assert rc == 0 and rep["ok"] and 0 < rep["received"] < 65 and rep["gap_readings"] == 65 - rep["received"]
        assert (rep["invalid"], rep["conflicts"], rep["gap_balance"], rep["gateways"]) == (0, 0, 0, 1)
        assert keys(db)[:5] == [("gw-test", s) for s in range(1, 6)]
        (device, driver, clock, lat, tags), = query(
            db, """SELECT device, driver, clock, ("values"->>'latitude')::float, tags FROM readings WHERE seq = 1""")
        assert (device, driver, tags) == ("van-gnss", "nmea", {"vehicle": "van-3"}) and lat
        assert clock in ("synced", "unsynced")  # this machine's clock decides
        assert query(db, "SELECT DISTINCT type FROM events ORDER BY 1") == [("device",), ("gap",)]
        assert query(db, "SELECT count(*) > 0 FROM health")[0][0]
        assert query(db, "SELECT gateway, payload->'buffer'->>'epoch' = %s FROM health_latest",
                     rep["epochs"][0]["epoch"]) == [("gw-test", True)]
        assert all(p.alive() for p in ingest)
    finally:
        agent.close()
        broker.close()


def test_platform_md_shows_the_schema_init_creates() -> None:
    from agent.ingest.schema import DDL_V1

    doc = (Path(__file__).resolve().parent.parent / "docs" / "PLATFORM.md").read_text()
    assert DDL_V1.strip() in doc


def test_the_quick_start_every_demo_reading_once_and_a_clean_report(
        pg: Postgres, broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    """docs/PLATFORM.md's quick start: two instances, then `edge-agent demo --broker-port`."""
    import re

    db = pg.new_database()
    ingest = fleet_factory(db, broker.port).start(2)
    demo = subprocess.run([sys.executable, "-m", "agent", "demo", "--broker-port", str(broker.port),
                           "--seconds", "6", "--dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=90)
    assert demo.returncode == 0, demo.stderr[-2000:]
    m = re.search(r"demo: (\d+) readings reached the platform", demo.stderr)
    assert m and int(m.group(1)) > 0, demo.stderr[-2000:]
    n = int(m.group(1))
    wait_rows(db, n)
    assert query(db, "SELECT count(*), count(DISTINCT (gateway, epoch, seq)), max(seq) FROM readings") == [(n, n, n)]
    rc, rep = report(db, "--since-epoch-start")
    assert rc == 0 and rep["ok"] and (rep["received"], rep["missing"], rep["duplicates"]) == (n, 0, 0)
    assert rep["status"]["gw-demo"]["state"] == "offline"
    for p in ingest:
        assert p.terminate() == 0
    stored = sum(int(x) for p in ingest for x in re.findall(r"(\d+) readings stored", p.output()))
    assert stored == n  # the two instances shared the demo's readings, none twice


def test_retiring_an_instance_drains_its_session_then_the_broker_forgets_it(
        pg: Postgres, broker: Broker, tmp_path: Path, fleet_factory: Any) -> None:
    import paho.mqtt.client as mqtt

    db = pg.new_database()
    keep, leaving = fleet_factory(db, broker.port).start(2)
    assert leaving.terminate() == 0  # stopped: the broker keeps routing its share into its session
    gws = gateways(tmp_path, 4, 200)
    pub = Publisher(broker.port)
    pub.send(interleave(gws))
    wait_until(lambda: 0 < count(db), 30, "the remaining instance writing")
    assert count(db) < 800  # the broker routed a share to `leaving` as it published: it waits in that session
    r = subprocess.run([*leaving.cmd, "--retire"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "retired ingest-2" in r.stderr and "its broker session ended" in r.stderr
    wait_rows(db, 800)
    drained = int(r.stderr.split("retired ingest-2: ")[1].split()[0])
    assert drained > 0
    # From now on everything goes to the one left; the retired client id has no session any more.
    more = ReplayGateway(tmp_path, "gw-after")
    more.accept(100)
    pub.send(more.messages())
    wait_rows(db, 900)
    assert keys(db) == sorted([(g.gateway, s) for g in gws for s in range(1, 201)]
                              + [("gw-after", s) for s in range(1, 101)])
    present: list[bool] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ingest-2", protocol=mqtt.MQTTv5)
    c.on_connect = lambda _c, _u, flags, *a: present.append(flags.session_present)
    c.connect("127.0.0.1", broker.port, clean_start=False)
    c.loop_start()
    wait_until(lambda: bool(present), 10, "CONNACK")
    c.disconnect()
    c.loop_stop()
    assert present == [False]
    rc, rep = report(db, "--since-epoch-start")
    assert rc == 0 and rep["received"] == 900
    pub.close()


def test_mutual_tls_and_credentials_and_no_fallback_to_plaintext(pg: Postgres, tmp_path: Path,
                                                               fleet_factory: Any) -> None:
    import trustme

    from agent.mosquitto import free_port

    ca, rogue = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    rogue.cert_pem.write_to_path(str(tmp_path / "rogue-ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client = ca.issue_cert("ingest")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    pw = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "ingest", "s3cret pass"], check=True, capture_output=True)
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    (tmp_path / "password").write_text("s3cret pass\n")
    (tmp_path / "wrong").write_text("guess\n")
    tls_port = free_port()
    broker = Broker(extra=(  # the default listener stays plaintext for the publisher
        f"listener {tls_port} 127.0.0.1\ncafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.pem'}\nrequire_certificate true\n"
        f"per_listener_settings false\npassword_file {pw}\nallow_anonymous true\nuser root\n")).start()
    try:
        db = pg.new_database()
        fleet = fleet_factory(db, broker.port)
        creds = ("--username", "ingest", "--password-file", str(tmp_path / "password"),
                 "--tls-cert", str(tmp_path / "client.crt"), "--tls-key", str(tmp_path / "client.key"))
        good = IngestProcess(db, tls_port, tmp_path, "tls-good", *creds, "--tls-ca", str(tmp_path / "ca.pem"))
        good.cmd[good.cmd.index(f"mqtt://127.0.0.1:{tls_port}")] = f"mqtts://127.0.0.1:{tls_port}"
        wrong_ca = IngestProcess(db, tls_port, tmp_path, "tls-rogue", *creds, "--tls-ca", str(tmp_path / "rogue-ca.pem"))
        plain = IngestProcess(db, broker.port, tmp_path, "tls-plain", *creds, "--tls-ca", str(tmp_path / "ca.pem"))
        plain.cmd[plain.cmd.index(f"mqtt://127.0.0.1:{broker.port}")] = f"mqtts://127.0.0.1:{broker.port}"
        refused = IngestProcess(db, tls_port, tmp_path, "tls-refused", *creds, "--tls-ca", str(tmp_path / "ca.pem"))
        refused.cmd[refused.cmd.index(f"mqtt://127.0.0.1:{tls_port}")] = f"mqtts://127.0.0.1:{tls_port}"
        refused.cmd[refused.cmd.index(str(tmp_path / "password"))] = str(tmp_path / "wrong")
        fleet.procs += [good, wrong_ca, plain, refused]
        for p in (good, wrong_ca, plain, refused):
            p.start()
        good.wait_log("subscribed to")
        wrong_ca.wait_log("certificate verify failed")
        plain.wait_log("no fallback to plaintext")
        refused.wait_log("refused the connection: Not authorized")
        gw = ReplayGateway(tmp_path, "gw-tls")
        gw.accept(60)
        pub = Publisher(broker.port)
        pub.send(gw.messages())
        wait_rows(db, 60)
        pub.close()
        assert "subscribed to" not in wrong_ca.output() + plain.output() + refused.output()
        assert "s3cret" not in good.output() + wrong_ca.output() + plain.output()
        assert "guess" not in refused.output()
        assert all(p.alive() for p in (good, wrong_ca, plain, refused))  # the refused ones keep retrying
        gw.close()
    finally:
        broker.close()


def test_two_instances_with_one_client_id_are_told_to_take_their_own(
        pg: Postgres, broker: Broker, tmp_path: Path) -> None:
    """Mosquitto closes a taken-over session without a reason code: the instances say what it looks like."""
    db = pg.new_database()
    first = IngestProcess(db, broker.port, tmp_path, "same-id").start_subscribed()
    second = IngestProcess(db, broker.port, tmp_path, "same-id")
    second.log = tmp_path / "same-id-2.log"
    try:
        second.start()
        hint = "if another instance runs with client id 'same-id', give every instance its own --client-id"
        wait_until(lambda: hint in first.output() + second.output(), 60, "the hint")
        assert first.alive() and second.alive()
    finally:
        first.close()
        second.close()
