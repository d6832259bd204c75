"""BLE config keys: validated by `config check` with exit 78 naming the key; bindkeys never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main
from tests.support import ble_vectors as v

HEAD = '[gateway]\nid = "gw"\n'


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    p = tmp_path / "agent.toml"
    p.write_text(HEAD + text)
    code = main(["config", "check", "--config", str(p)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(("text", "key", "msg"), [
    ('[[devices]]\nid = "t"\ndriver = "bthome"\naddress = "A4:C1:38:00:00:01"\nkey = "zz"\n',
     "devices[0].key", "hex"),
    ('[[devices]]\nid = "t"\ndriver = "xiaomi"\naddress = "A4:C1:38:00:00:01"\nkey = "0011"\n',
     "devices[0].key", "16 bytes"),
    ('[[devices]]\nid = "t"\ndriver = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C3"\nkey = "' + "00" * 16 + '"\n',
     "devices[0].key", "unknown key"),
    ('[[devices]]\nid = "t"\ndriver = "aranet4"\n', "devices[0].address", "required"),
    ('[[devices]]\nid = "t"\ndriver = "ruuvi"\naddress = "C7:F5:2A"\n', "devices[0].address", "Bluetooth address"),
    ('[[devices]]\nid = "t"\ndriver = "ruuvi"\naddress = "C7:F5:2A:A1:B2:C3"\nmin_interval = "soon"\n',
     "devices[0].min_interval", "invalid duration"),
    ('[ble]\nadapter = "wlan0"\n', "ble.adapter", "pattern"),
    ('[ble]\nscanning_mode = "sometimes"\n', "ble.scanning_mode", "auto"),
])
def test_invalid_ble_config_exits_78_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, msg: str
) -> None:
    code, out = check(tmp_path, text, capsys)
    assert code == 78
    assert key in out and msg in out


def test_valid_ble_config_and_masked_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (f'[ble]\nadapter = "hci1"\nscanning_mode = "passive"\n[[devices]]\nid = "enc"\ndriver = "bthome"\n'
            f'address = "{v.BTHOME_ENC_MAC}"\nkey = "{v.BTHOME_KEY.upper()}"\nmin_interval = "30s"\n'
            '[[devices]]\nid = "bms"\ndriver = "ble_nus"\naddress = "F0:0D:12:34:56:78"\n'
                'unknown_fields = "keep"\n')
    code, out = check(tmp_path, text, capsys)
    assert code == 0, out
    p = tmp_path / "agent.toml"
    assert main(["config", "show", "--config", str(p), "--json"]) == 0
    shown = capsys.readouterr().out
    assert v.BTHOME_KEY not in shown.lower() and "***" in shown
