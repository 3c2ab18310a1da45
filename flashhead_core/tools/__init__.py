"""Tooling around the runtime, never imported by it: the `flashhead` command (cli), the demo, downloads, parity
with the official implementation, benchmarks and their per-stage timer."""
