"""Development tools shared by tests/ and benchmarks/ (fault simulation); never shipped in the wheel."""
