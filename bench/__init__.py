"""Benchmarks (not tests): run them as `python -m bench.<name>` from the repository root, so
the `proxy` they measure is this checkout's. They share nothing with `tests/`."""
