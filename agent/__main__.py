"""`python -m agent` runs the CLI."""

from __future__ import annotations

from agent.cli.main import main

raise SystemExit(main())
