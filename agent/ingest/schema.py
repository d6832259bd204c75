"""The PostgreSQL schema of the ingest service (docs/PLATFORM.md shows the same DDL)."""

from __future__ import annotations

from typing import Any

VERSION = 1

# Version 1. Each statement is idempotent, so `--init` on an existing database is a no-op;
# a later version appends its own steps to MIGRATIONS.
DDL_V1 = """
CREATE TABLE IF NOT EXISTS readings (
    gateway  text        NOT NULL,
    epoch    text        NOT NULL,
    seq      bigint      NOT NULL,
    device   text        NOT NULL,
    driver   text        NOT NULL,
    ts       timestamptz NOT NULL,
    clock    text        NOT NULL,
    "values" jsonb       NOT NULL,  -- quoted: VALUES is an SQL keyword
    tags     jsonb       NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    digest   bytea       NOT NULL,  -- BLAKE2b-128 of the reading's exact text: redeliveries must match
    PRIMARY KEY (gateway, epoch, seq)
);
CREATE INDEX IF NOT EXISTS readings_device_ts ON readings (gateway, device, ts DESC);

CREATE TABLE IF NOT EXISTS gaps (
    gateway  text        NOT NULL,
    epoch    text        NOT NULL,
    from_seq bigint      NOT NULL,
    to_seq   bigint      NOT NULL,
    count    bigint      NOT NULL,
    reason   text        NOT NULL,
    ts       timestamptz NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    digest   bytea       NOT NULL,
    PRIMARY KEY (gateway, epoch, from_seq)
);

CREATE TABLE IF NOT EXISTS events (
    id       bigserial   PRIMARY KEY,
    gateway  text        NOT NULL,
    type     text        NOT NULL,
    ts       timestamptz NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    payload  jsonb       NOT NULL,
    digest   bytea       NOT NULL,
    UNIQUE (gateway, digest)
);
CREATE INDEX IF NOT EXISTS events_gateway_ts ON events (gateway, ts DESC);

CREATE TABLE IF NOT EXISTS status (
    gateway  text        PRIMARY KEY,
    state    text        NOT NULL,
    reason   text,
    epoch    text,
    version  text,
    ts       timestamptz NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    payload  jsonb       NOT NULL
);

CREATE TABLE IF NOT EXISTS health (
    gateway  text        NOT NULL,
    ts       timestamptz NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    payload  jsonb       NOT NULL,
    PRIMARY KEY (gateway, ts)
);

CREATE TABLE IF NOT EXISTS health_latest (
    gateway  text        PRIMARY KEY,
    ts       timestamptz NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    payload  jsonb       NOT NULL
);

CREATE TABLE IF NOT EXISTS conflicts (
    id       bigserial   PRIMARY KEY,
    kind     text        NOT NULL,  -- 'reading' (key seq) or 'gap' (key from_seq)
    gateway  text        NOT NULL,
    epoch    text        NOT NULL,
    seq      bigint      NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    payload  text        NOT NULL,  -- the differing redelivery, verbatim; the first stays in its table
    digest   bytea       NOT NULL,
    UNIQUE (kind, gateway, epoch, seq, digest)
);

CREATE TABLE IF NOT EXISTS invalid (
    id       bigserial   PRIMARY KEY,
    topic    text        NOT NULL,
    gateway  text,                  -- the topic level before the last one (the default prefix's id)
    error    text        NOT NULL,
    received timestamptz NOT NULL DEFAULT now(),
    payload  bytea       NOT NULL,
    digest   bytea       NOT NULL UNIQUE
);

-- Identical redeliveries dropped, per instance (no row contention between instances).
CREATE TABLE IF NOT EXISTS tallies (
    gateway        text   NOT NULL,
    epoch          text   NOT NULL,
    instance       text   NOT NULL,
    duplicates     bigint NOT NULL DEFAULT 0,
    gap_duplicates bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, epoch, instance)
);

CREATE TABLE IF NOT EXISTS ingest_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
"""

MIGRATIONS: dict[int, str] = {1: DDL_V1}

def current_version(conn: Any) -> int:
    """The schema version recorded in the database (0: none)."""
    row = conn.execute("SELECT to_regclass('ingest_meta') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT value FROM ingest_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def init(conn: Any) -> dict[str, Any]:
    """Create or migrate the schema in one transaction; what was done."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('edge-agent ingest schema'))")
        before = current_version(conn)
        if before > VERSION:
            raise RuntimeError(f"the database has schema version {before}, newer than this "
                               f"edge-agent's {VERSION}: upgrade edge-agent")
        for v in range(before + 1, VERSION + 1):
            conn.execute(MIGRATIONS[v])
        conn.execute("INSERT INTO ingest_meta VALUES ('schema_version', %s) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (str(VERSION),))
    return {"from_version": before, "version": VERSION}
