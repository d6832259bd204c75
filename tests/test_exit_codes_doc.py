"""The exit codes `--help` and README.md list are the table of docs/CLI.md, every one of them."""
from __future__ import annotations

import re
from pathlib import Path

from agent.cli import common
from agent.cli.main import EPILOG

ROOT = Path(__file__).parents[1]


def _table_codes() -> set[int]:
    text = (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")
    table = text.split("| exit | meaning |", 1)[1].split("\n\n", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}


def _listed(sentence: str) -> set[int]:
    return {int(n) for group in re.findall(r"\b\d+(?:/\d+)*\b", sentence) for n in group.split("/")}


def test_the_cli_table_has_every_exit_code_of_the_code() -> None:
    codes = {v for k, v in vars(common).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert _table_codes() == codes == {0, 1, 2, 3, 4, 5, 69, 73, 78}


def test_help_lists_every_exit_code() -> None:
    assert _listed(EPILOG.split("Exit codes:", 1)[1]) == _table_codes()


def test_readme_lists_every_exit_code() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    sentence = text.split("Exit codes:", 1)[1].split(". ", 1)[0]
    assert _listed(sentence) == _table_codes()
