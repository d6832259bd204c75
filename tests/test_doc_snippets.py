"""Every TOML snippet in README.md and docs/*.md is a valid configuration (what a user pastes)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config

ROOT = Path(__file__).parents[1]
FENCE = re.compile(r"^( *)```toml *\n(.*?)^ *```", re.M | re.S)


def _snippets() -> list[tuple[str, str]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            body = "\n".join(s[len(m.group(1)):] for s in m.group(2).splitlines())
            found.append((f"{doc.relative_to(ROOT)}:{line}", body))
    return found


SNIPPETS = _snippets()


def test_the_docs_have_toml_snippets() -> None:
    assert {where.split(":")[0] for where, _ in SNIPPETS} >= {"README.md", "docs/BLE.md", "docs/VEHICLE.md"}


@pytest.mark.parametrize(("where", "body"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_doc_toml_snippet_passes_config_check(where: str, body: str, tmp_path: Path) -> None:
    # device-only snippets go into a file with a gateway; files they name (CA, DBC) are the user's
    if not re.search(r"^\[gateway\]", body, re.M):
        body = '[gateway]\nid = "gw-doc"\n\n' + body
    for rel in re.findall(r'^dbc = "([^/"][^"]*)"', body, re.M):  # the user's DBC: the demo vehicle's stands in
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "drivers" / "can" / "vehicle.dbc", tmp_path / rel)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(body, encoding="utf-8")
    try:
        load_config(cfg)
    except ConfigError as e:
        # A file only the user has (password, CA) is fine where the snippet says it must exist:
        # pasted as shown, config check would otherwise fail with no hint why.
        unsaid = [p for p in e.problems if not _said_to_exist(body, p)]
        if unsaid:
            pytest.fail(f"{where}: {unsaid}")


def _said_to_exist(body: str, problem: str) -> bool:
    key = problem.split(":", 1)[0].rsplit(".", 1)[-1]
    return "file not found" in problem and any(
        re.search(rf"\b{re.escape(key)} = ", line) and "must exist" in line for line in body.splitlines())
