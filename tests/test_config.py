"""Configuration: every problem named by key (and line), paths, defaults, masking, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config, masked_dump
from agent.errors import ConfigError
from agent.units import parse_duration, parse_size

GOOD = """\
[gateway]
id = "gw-parken-01"

[buffer]
path = "state/buffer.db"
max_bytes = "10MB"
max_age = "2d"

[uplink]
host = "broker.example"
port = 8883
username = "gw"
password_file = "secret.txt"
tls = { ca_file = "ca.pem" }

[[devices]]
id = "van-gnss"
driver = "nmea"
port = "/dev/ttyUSB0"
tags = { vehicle = "van-3" }
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def write_secrets(folder: Path) -> None:
    (folder / "secret.txt").write_text("s3cret\n")
    (folder / "secret.txt").chmod(0o600)
    (folder / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")


def test_good_config_resolves_relative_paths_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(GOOD)
    write_secrets(tmp_path)
    cfg = load_config(tmp_path / "agent.toml")
    assert cfg.buffer.path == tmp_path / "state/buffer.db"
    assert cfg.buffer.max_bytes == 10_000_000
    assert cfg.buffer.max_age == 2 * 86400
    assert cfg.uplink.tls is not None and cfg.uplink.tls.ca_file == tmp_path / "ca.pem"
    assert cfg.uplink.password_file == tmp_path / "secret.txt"
    assert cfg.topic_prefix == "edge/gw-parken-01"
    assert cfg.devices[0].baud is None and cfg.devices[0].tags == {"vehicle": "van-3"}


def test_every_problem_is_listed_with_key_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[gateway]\nid = "Bad Id"\n\n[uplink]\nport = 70000\nqos = 2\n\n[buffer]\non_full = "explode"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "a.toml")
    probs = e.value.problems
    assert any(p.startswith("gateway.id:") and "(line 2)" in p for p in probs)
    assert any(p.startswith("uplink.port:") and "(line 5)" in p for p in probs)
    assert any(p.startswith("uplink.qos:") for p in probs)
    assert any(p.startswith("buffer.on_full:") and "(line 9)" in p for p in probs)


def test_device_problems(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[gateway]\nid = "gw"\n[[devices]]\nid = "a"\ndriver = "nope"\n'
        '[[devices]]\nid = "a"\ndriver = "nmea"\n[[devices]]\nid = "c"\ndriver = "nmea"\nport = "/dev/x"\nbogus = 1\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "a.toml")
    text = "\n".join(e.value.problems)
    assert "devices[0].driver: unknown driver 'nope' (known: " in text
    assert "devices[1].id: duplicate device id 'a'" in text
    assert "devices[1].port: required by driver 'nmea'" in text
    assert "devices[2].bogus: unknown key" in text


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[gateway]\nid = "gw"\n[uplink]\ntopic_prefix = "a/#"\n', "uplink.topic_prefix"),
        ('[gateway]\nid = "gw"\n[uplink]\npassword_file = "p"\n', "uplink"),
        ('[gateway]\nid = "gw"\n[buffer]\nmax_age = "forever"\n', "buffer.max_age"),
        ('[gateway]\nid = "gw"\n[buffer]\nmax_bytes = -5\n', "buffer.max_bytes"),
        ('[gateway]\nid = "gw"\n[buffer]\nmax_bytes = 10\n', "buffer.max_bytes"),
        ('[gateway]\nid = "gw"\n[buffer]\nmax_age = "0s"\n', "buffer.max_age"),
        ('[gateway]\nid = "gw"\n[buffer]\nqueue_size = -1\n', "buffer.queue_size"),
        ('[gateway]\nid = "gw"\n[buffer]\npage_size = 1000\n', "buffer.page_size"),
        ('[gateway]\nid = "gw"\n[[devices]]\nid = "x"\ndriver = "nmea"\nport = "/dev/x"\naddress = "C7:F5:2A:A1:B2:C3"\n',
         "devices[0].address"),
        ('[gateway]\nid = "gw"\n[[devices]]\nid = "x"\ndriver = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C3"\nbaud = 9600\n',
         "devices[0].baud"),
        ('[gateway]\nid = "gw"\nhealth_interval = 0\n', "gateway.health_interval"),
        ('[gateway]\nid = "gw"\n[[devices]]\nid = "x"\ndriver = "nmea"\nport = "/dev/x"\nbaud = 1\n', "devices[0].baud"),
        ('[gateway]\nid = "gw"\nsurprise = true\n', "gateway.surprise"),
        ('[gateway]\nid = "gw"\n[uplink]\ntls = { cert_file = "c.pem" }\n', "uplink.tls"),
        ('[[devices]]\nid = "x"\n', "gateway"),
        ('[gateway]\nid = "gw"\n[[devices]]\nid = "x"\ndriver = "ruuvi"\naddress = "zz"\n', "devices[0].address"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "a.toml")
    assert any(p.startswith(key + ":") for p in e.value.problems), e.value.problems


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[gateway\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(tmp_path / "a.toml")
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_units() -> None:
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GiB") == 1024**3
    assert parse_size(4096) == 4096
    assert parse_duration("14d") == 14 * 86400
    assert parse_duration("500ms") == 0.5
    assert parse_duration("90") == 90
    for bad in ("12XB", "", "-1MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_cli_check_show_schema(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(GOOD.replace('username = "gw"', 'username = "gw"\nclient_id = "x"'))
    write_secrets(tmp_path)
    r = cli("config", "check", str(tmp_path / "agent.toml"))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    r = cli("config", "show", "--json", "--config", str(tmp_path / "agent.toml"))
    shown = json.loads(r.stdout)
    assert shown["uplink"]["topic_prefix"] == "edge/gw-parken-01"
    assert shown["buffer"]["max_bytes"] == 10_000_000
    r = cli("config", "schema")
    schema = json.loads(r.stdout)
    assert schema["title"] == "edge-agent configuration" and "gateway" in schema["properties"]
    (tmp_path / "bad.toml").write_text('[gateway]\nid = "gw"\n[uplink]\nport = "x"\n')
    r = cli("config", "check", str(tmp_path / "bad.toml"))
    assert r.returncode == 78
    assert "uplink.port:" in r.stderr and "Traceback" not in r.stderr
    r = cli("config", "check", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 78 and "file not found" in r.stderr


def test_show_masks_secrets() -> None:
    from agent.config import AgentConfig

    cfg = AgentConfig.model_validate({
        "gateway": {"id": "gw"},
        "uplink": {"username": "u", "password_file": "/etc/edge-agent/pw"},
        "devices": [{"id": "t", "driver": "bthome", "address": "AA:BB:CC:DD:EE:FF",
                     "key": "231d39c1d7cc1ab1aee224cd096db932"}],
    })
    data = masked_dump(cfg)
    assert data["devices"][0]["key"] == "***"
    assert "231d39c1" not in json.dumps(data)
    assert data["uplink"]["password_file"] == "/etc/edge-agent/pw", "a path is not a secret"
    assert data["uplink"]["username"] == "u"


def test_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    for example in sorted((root / "config").glob("*.toml")):
        r = cli("config", "check", str(example))
        assert r.returncode == 0, f"{example.name}: {r.stderr}"


def test_config_option_works_before_and_after_the_action(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('[gateway]\nid = "gw-x"\n')
    for args in (("config", "--config", str(tmp_path / "agent.toml"), "show", "--json"),
                 ("config", "show", "--config", str(tmp_path / "agent.toml"), "--json")):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["gateway"]["id"] == "gw-x"


def _problems(tmp_path: Path, devices: str) -> list[str]:
    (tmp_path / "a.toml").write_text('[gateway]\nid = "gw"\n' + devices)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "a.toml", check_files=False)
    return e.value.problems


def test_devices_validate_as_a_union_on_driver() -> None:
    """The AgentConfig model itself picks each device's model by `driver`: no separate post-check to forget."""
    from pydantic import ValidationError

    from agent.config import AgentConfig, json_schema
    from drivers import driver_class
    from edge_common.device import DeviceConfig

    with pytest.raises(ValidationError) as e:
        AgentConfig.model_validate({"gateway": {"id": "gw"}, "devices": [
            {"id": "g", "driver": "nmea", "port": "/dev/x", "interval": 1},  # a sim key on a serial driver
            {"id": "s", "driver": "sim", "family": "nmea", "interval": 1, "fields": {}},  # a lines key on sim
        ]})
    assert sorted((err["loc"], err["msg"]) for err in e.value.errors()) == [
        (("devices", 0, "interval"), "unknown key"), (("devices", 1, "fields"), "unknown key")]
    cfg = AgentConfig.model_validate({"gateway": {"id": "gw"}, "devices": [
        {"id": "s", "driver": "sim", "family": "nmea", "interval": "2s"}]})
    dev = cfg.devices[0]
    assert type(dev) is DeviceConfig and dev.options == {"family": "nmea", "interval": "2s"}  # what drivers read
    # `config schema` prints the very model that validated it
    model = driver_class("sim").device_model()
    assert model.__name__ == "Device_sim"
    schema = json_schema()["$defs"]["Device_sim"]
    assert set(schema["properties"]) == set(model.model_json_schema()["properties"])


def test_device_key_problems_name_key_and_line(tmp_path: Path) -> None:
    probs = _problems(tmp_path, (
        '[[devices]]\nid = "a"\ndriver = "sim"\nfamily = "nmea"\ninterval = "soon"\nport = "/dev/x"\n'  # lines 3-8
        '[[devices]]\nid = "b"\ndriver = "nmea"\nport = "/dev/x"\nbaud = "fast"\n'  # lines 9-13
        '[[devices]]\nid = "c"\ndriver = "ruuvi"\n'  # lines 14-16
        '[[devices]]\nid = "d"\ndriver = "sim"\n'  # lines 17-19
    ))
    assert any(p.startswith("devices[0].interval: ") and p.endswith("(line 7)") for p in probs), probs
    assert "devices[0].port: not used by driver 'sim' (line 8)" in probs
    assert any(p.startswith("devices[1].baud: ") and p.endswith("(line 13)") for p in probs), probs
    assert "devices[2].address: required by driver 'ruuvi' (line 14)" in probs
    assert "devices[3].family: Field required (line 17)" in probs
    assert len(probs) == 5, probs


def test_a_plugin_device_validates_through_the_same_union(tmp_path: Path) -> None:
    from drivers.registry import registry

    if "acme_th1" not in registry().drivers:
        pytest.skip("edge-agent-thermo is not installed (scripts/test installs it)")
    probs = _problems(tmp_path, '[[devices]]\nid = "th"\ndriver = "acme_th1"\nbaud = "fast"\naddress = "C7:F5:2A:A1:B2:C3"\n'
                                '[[devices]]\nid = "x"\ndriver = "acme_th2"\n')
    assert any(p.startswith("devices[0].baud: ") and p.endswith("(line 6)") for p in probs), probs
    assert "devices[0].port: required by driver 'acme_th1' (line 3)" in probs
    assert "devices[0].address: not used by serial driver 'acme_th1' (it reads `port`) (line 7)" in probs
    assert len(probs) == 4, probs
    unknown = next(p for p in probs if p.startswith("devices[1].driver: unknown driver 'acme_th2' (known: "))
    assert "acme_th1" in unknown and "nmea" in unknown


def test_show_round_trips_every_transport_through_check(tmp_path: Path) -> None:
    """`config show` of a device on each transport (a polled driver over BLE too) is a file `config check` takes."""
    (tmp_path / "agent.toml").write_text('[gateway]\nid = "gw"\n' + "".join(
        f'[[devices]]\nid = "d{i}"\n{keys}\n' for i, keys in enumerate([
            'driver = "nmea"\nport = "/dev/ttyUSB0"',
            'driver = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C3"',
            'driver = "vesc"\ntransport = "ble"\naddress = "C7:F5:2A:A1:B2:C4"',
            'driver = "jbd_bms"\nport = "/dev/ttyUSB1"',
            'driver = "sim"\nfamily = "nmea"',
        ])))
    shown = cli("config", "show", str(tmp_path / "agent.toml"))
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "again.toml").write_text(shown.stdout)
    r = cli("config", "check", str(tmp_path / "again.toml"))
    assert r.returncode == 0, r.stderr


def test_a_misspelt_device_key_gets_a_suggestion(tmp_path: Path) -> None:
    probs = _problems(tmp_path, '[[devices]]\nid = "s"\ndriver = "sim"\nfamily = "nmea"\nintervall = "2s"\n'
                                '[[devices]]\nid = "g"\ndriver = "nmea"\nport = "/dev/x"\nexpected_intreval = "1m"\n'
                                'colour = "red"\n')
    assert probs == ["devices[0].intervall: unknown key (did you mean `interval`?) (line 7)",
                     "devices[1].expected_intreval: unknown key (did you mean `expected_interval`?) (line 12)",
                     "devices[1].colour: unknown key (line 13)"]


def test_a_device_key_named_like_pydantic_internals_is_just_unknown(tmp_path: Path) -> None:
    probs = _problems(tmp_path, '[[devices]]\nid = "s"\ndriver = "sim"\nfamily = "nmea"\n_fields_set = 1\n'
                                'model_fields = 2\n')
    assert probs == ["devices[0]._fields_set: unknown key (line 7)", "devices[0].model_fields: unknown key (line 8)"]


@pytest.mark.parametrize("driver", ["bthome", "xiaomi"])
def test_config_schema_rejects_the_bindkeys_config_check_rejects(driver: str) -> None:
    """An editor validating against `config schema` flags a bindkey that is not 32 hex digits, as `config check` does."""
    import jsonschema

    from agent.config import AgentConfig, json_schema

    validator = jsonschema.Draft202012Validator(json_schema())

    def doc(key: str) -> dict[str, object]:
        return {"gateway": {"id": "gw"}, "devices": [{"id": "t", "driver": driver, "address": "A4:C1:38:12:34:56",
                                                      "key": key}]}

    for good in ("231d39c1d7cc1ab1aee224cd096db932", "231D39C1 D7CC1AB1 AEE224CD 096DB932"):
        AgentConfig.model_validate(doc(good))
        assert not list(validator.iter_errors(doc(good))), good
    for bad in ("...", "231d39c1d7cc1ab1aee224cd096db9", "231d39c1d7cc1ab1aee224cd096db93g"):
        with pytest.raises(ValueError):
            AgentConfig.model_validate(doc(bad))
        assert list(validator.iter_errors(doc(bad))), bad
