"""``padellm-ner bench``: dispatch to the latency or load benchmark, or a whole campaign."""

from __future__ import annotations

from typing import Any

from padellm_ner.errors import InvalidInputError

__all__ = ["run_bench"]


def run_bench(args: Any) -> int:
    """Run ``bench latency``, ``bench load`` or ``bench campaign`` with the parsed arguments."""
    if args.bench_command == "latency":
        from padellm_ner.bench.latency import run_latency_cli

        return run_latency_cli(args)
    if args.bench_command == "campaign":
        from padellm_ner.bench.campaign import run_campaign_cli

        return run_campaign_cli(args)
    if args.bench_command == "load":
        from padellm_ner.bench.load import run_load_cli

        return run_load_cli(args)
    raise InvalidInputError(f"unknown bench command {args.bench_command!r}; use latency, load or campaign")
