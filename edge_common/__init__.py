"""Ground floor shared by `agent` and `drivers`: readings, the error root, backoff, units, device keys.

Imports neither `agent` nor `drivers` (import-linter checks it); both build on it.
"""
