"""Benchmarks: offline throughput, a load generator for OpenAI-compatible servers, and peers.

Nothing here is imported by the server or the engine; `flintlm bench ...` (see `cli.py`) is
the entry point.
"""
