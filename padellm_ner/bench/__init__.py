"""Benchmarks: in-process latency of PaDeLLM vs the baselines, and load against a server.

``padellm-ner bench latency`` and ``padellm-ner bench load``; see BENCHMARKS.md.
"""

from padellm_ner.bench.cli import run_bench

__all__ = ["run_bench"]
