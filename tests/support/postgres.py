"""A real PostgreSQL server (Debian package) in a temp folder, run as an unprivileged user."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from agent.ingest.localpg import LocalPostgres, pg_bindir

_names = itertools.count(1)


class Postgres(LocalPostgres):
    """LocalPostgres that fails the test (not errors) when PostgreSQL is missing; fsync off."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        if pg_bindir() is None:
            pytest.fail("PostgreSQL is not installed (scripts/test installs the Debian package)")
        super().__init__(port, workdir, durable=False)

    def new_database(self, init: bool = True) -> str:
        """A fresh database (with the ingest schema unless init=False); its URL."""
        import psycopg

        name = f"t{next(_names)}"
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        url = self.url.rsplit("/", 1)[0] + "/" + name
        if init:
            from agent.ingest.schema import init as create

            with psycopg.connect(url, autocommit=True) as c:
                create(c)
        return url


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return list(c.execute(sql, args or None).fetchall())
