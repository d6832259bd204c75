"""What is installed, cached (edge_common/installed.py), and the run path without importlib.metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drivers.registry import GROUP, EntryPoint
from tests.test_registry import _fake_dist

ROOT = Path(__file__).resolve().parents[1]

# Prints what it read and whether importlib.metadata was imported for it.
PROBE = """
import json, sys
from edge_common import installed
eps = installed.entry_points(sys.argv[1])
vs = installed.versions(["pydantic", "no-such-distribution-x"])
print(json.dumps({"eps": eps, "versions": vs, "metadata": "importlib.metadata" in sys.modules}))
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "site").mkdir()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]),
            "XDG_CACHE_HOME": str(tmp_path / "cache")}


def _probe(env: dict[str, str], cwd: Path, group: str = GROUP) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", PROBE, group], capture_output=True, text=True, timeout=60,
                       env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_reads_import_no_metadata_and_answer_what_it_says(env: dict[str, str], tmp_path: Path) -> None:
    from importlib import metadata

    first = _probe(env, tmp_path)  # a miss: read by a child
    cache = Path(env["XDG_CACHE_HOME"]) / "edge-agent"
    assert sorted(p.name for p in cache.iterdir()) == [f"entry-points-{GROUP}.json", "versions.json"]
    second = _probe(env, tmp_path)  # a hit
    assert first["metadata"] is False and second["metadata"] is False
    assert first["eps"] == second["eps"]
    assert first["versions"] == second["versions"] == {"pydantic": metadata.version("pydantic"),
                                                      "no-such-distribution-x": None}
    expected = [[e.name, e.value, e.dist.name if e.dist else None] for e in metadata.entry_points(group=GROUP)]
    assert first["eps"] == expected  # (this process has the same sys.path entries that hold metadata)


def test_an_installed_distribution_is_read_at_once(env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site"
    before = _probe(env, tmp_path)
    _fake_dist(site, "acme_dist", {"acme": "acme_family:FAMILY"}, {"acme_family": "FAMILY = None\n"})
    after = _probe(env, tmp_path)
    assert after["eps"] == [["acme", "acme_family:FAMILY", "acme_dist"], *before["eps"]]  # type: ignore[misc]  # site first
    (site / "acme_dist-1.0.dist-info" / "entry_points.txt").unlink()
    (site / "acme_dist-1.0.dist-info" / "RECORD").write_text("")  # rewritten metadata: the dist-info's mtime
    os.utime(site / "acme_dist-1.0.dist-info", ns=(0, os.stat(site).st_mtime_ns + 1_000_000_000))
    assert _probe(env, tmp_path)["eps"] == before["eps"]


def test_files_written_beside_the_code_keep_the_cache(env: dict[str, str], tmp_path: Path) -> None:
    """`python -m agent` puts its working directory on sys.path; a buffer file written there is no install."""
    from edge_common import installed

    work = tmp_path / "work"
    work.mkdir()
    key = installed.install_key()
    sys.path.insert(0, str(work))
    try:
        key = installed.install_key()
        (work / "buffer.db").write_bytes(b"x")
        os.utime(work, ns=(0, os.stat(work).st_mtime_ns + 1_000_000_000))
        assert installed.install_key() == key
        (work / "acme-1.0.dist-info").mkdir()  # a distribution there is an install
        assert installed.install_key() != key
    finally:
        sys.path.remove(str(work))


def test_an_unwritable_cache_reads_the_metadata_every_time(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    first, second = _probe(env, tmp_path), _probe(env, tmp_path)
    assert first["metadata"] is False and second["metadata"] is False  # each read by a child
    assert first["eps"] == second["eps"] and first["eps"]


def test_without_a_child_the_metadata_is_read_here(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from edge_common import installed

    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    assert installed.read_outside("versions", ["pydantic"]) == {"pydantic": metadata.version("pydantic")}


@pytest.mark.parametrize(("value", "expected"), [
    ("json:dumps", "dumps"),
    ("os.path:join", "join"),
    ("json", "json"),
    ("json.decoder:JSONDecoder.decode", "decode"),
    ("json : dumps [fast]", "dumps"),  # spaces and extras as importlib.metadata's pattern allows them
])
def test_entry_point_load_names_the_object_importlib_metadata_names(value: str, expected: str) -> None:
    from importlib import metadata

    ours, theirs = EntryPoint("x", value).load(), metadata.EntryPoint("x", value, GROUP).load()
    assert ours is theirs and getattr(ours, "__name__", None) == expected


RUN_PATH = """
import sys
from agent.memory import skip_pydantic_plugins
skip_pydantic_plugins()
from agent.config import load_config
from agent.health import versions
cfg = load_config(sys.argv[1], check_files=False)
v = versions()
from pydantic import BaseModel, ValidationError
class M(BaseModel):
    n: int
try:
    M(n="x")
    raise SystemExit("pydantic accepted 'x' for an int")
except ValidationError:
    pass
print(cfg.devices[0].driver, M(n=3).n, v["pydantic"] is not None, "importlib.metadata" in sys.modules)
"""


def test_the_run_path_keeps_no_package_metadata(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nid = "gw"\n[[devices]]\nid = "s"\ndriver = "sim"\nfamily = "sds011"\n')
    runs = [subprocess.run([sys.executable, "-c", RUN_PATH, str(cfg)], capture_output=True, text=True,
                           timeout=60, env=env, cwd=tmp_path) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert runs[0].stdout.split() == ["sim", "3", "True", "False"]  # the first start: read by a child
    assert runs[1].stdout.split() == ["sim", "3", "True", "False"]


def test_pydantic_plugins_are_left_alone_when_someone_chose() -> None:
    code = textwrap.dedent("""
        import sys
        from agent.memory import skip_pydantic_plugins
        print(skip_pydantic_plugins())
        from pydantic import BaseModel
        class M(BaseModel):
            n: int
        print("importlib.metadata" in sys.modules)
        """)
    for setting, expected in (("__all__", ["False", "True"]), ("some_plugin", ["False", "True"])):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env={**os.environ, "PYDANTIC_DISABLE_PLUGINS": setting})
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == expected


def test_pydantic_asks_its_plugin_loader_only_for_get_plugins() -> None:
    """The stand-in (agent/memory.py) provides get_plugins only: a pydantic asking for more fails here first."""
    import pydantic.plugin._schema_validator as sv

    src = Path(sv.__file__).read_text()
    uses = [line.strip() for line in src.splitlines() if "_loader" in line]
    assert uses == ["from ._loader import get_plugins"]
    from pydantic.plugin._loader import get_plugins

    assert get_plugins.__code__.co_argcount == 0
