"""Benchmarks of loragate against vLLM's own OpenAI server and the tutorial's server.

Run from the repository root: `python -m benchmarks` (full) or `python -m benchmarks --quick`.
Not part of the installed package: it starts servers, drives load and writes a report.
"""
