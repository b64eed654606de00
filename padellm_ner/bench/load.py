"""``bench load``: throughput and latency percentiles of a served model under concurrency.

An asyncio load generator: at each concurrency level ``c``, ``c`` workers share one
``padellm_client.AsyncNERClient`` and send test sentences in a loop (closed loop: a worker
sends its next sentence when the previous answer arrives) until the level's time or
request budget is spent. Loopback servers only: this is a benchmark, not a load test of
someone else's machine. To compare PaDeLLM with AutoReg_Struct served the same way, run
it against both servers with ``--label``; every ``load_<label>.json`` in ``--out`` is
merged into ``load_compare.md``/``.png``. With ``--model`` instead of ``--server`` the
workers call the model in process (``Extractor.aextract`` over an ``AsyncEngineLLM``: the
served arrival pattern, no Triton), so one folder can hold both and the difference is
what serving adds under load.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from padellm_ner.bench import report
from padellm_ner.cli_types import fill_unset, flags_given
from padellm_ner.errors import InvalidInputError

__all__ = [
    "LevelResult",
    "parse_concurrency",
    "check_loopback",
    "run_level",
    "run_load",
    "load_table",
    "write_load_report",
    "run_load_cli",
]

logger = logging.getLogger(__name__)

#: Hard cap on requests per concurrency level, whatever ``--duration`` says.
MAX_REQUESTS_PER_LEVEL = 20_000
#: Per-request deadline, seconds.
REQUEST_TIMEOUT = 60.0

#: ``bench load --model`` settings (the served model has its own, so --server refuses them)
IN_PROCESS_DEFAULTS = {"device": "auto", "dtype": "auto", "batch_window_us": 5000}
_COMMAND_KEYS = (
    "server",
    "dataset",
    "limit",
    "concurrency",
    "duration",
    "model_name",
    "label",
    "metrics_url",
    "out",
)


#: The engine counters a level reports (``EngineStats`` fields; served, their
#: ``ENGINE_METRICS`` names on the metrics port).
ENGINE_COUNTERS = (
    "num_forwards",
    "num_decode_steps",
    "sum_batch_size",
    "num_prompt_tokens_computed",
    "num_prefill_slots",
)

Counters = Callable[[], dict[str, float]]


@dataclass
class LevelResult:
    """One concurrency level."""

    label: str
    concurrency: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    errors: dict[str, int] = field(default_factory=dict)  # exception class -> count
    engine: dict[str, float] | None = None  # ENGINE_COUNTERS over the level, when known

    @property
    def num_ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def num_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful sentences per second."""
        return self.num_ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "elapsed_s": self.elapsed_s,
            "num_ok": self.num_ok,
            "num_errors": self.num_errors,
            "errors": dict(self.errors),
            "throughput": self.throughput,
            "mean_ms": float(np.mean(self.latencies_ms)) if self.latencies_ms else None,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p99_ms": self.percentile(99),
            **self.engine_summary(),
        }

    def engine_summary(self) -> dict[str, float | None]:
        """What batching did over the level: forwards per answered sentence, rows per
        decode step, and the share of prefill columns that were padding."""
        e = self.engine or {}
        forwards, rows, steps = e.get("num_forwards"), e.get("sum_batch_size"), e.get("num_decode_steps")
        computed, slots = e.get("num_prompt_tokens_computed"), e.get("num_prefill_slots")
        return {
            "forwards_per_sentence": forwards / self.num_ok if forwards is not None and self.num_ok else None,
            "rows_per_decode_step": rows / steps if rows is not None and steps else None,
            "prefill_padding": 1 - computed / slots if computed is not None and slots else None,
        }


def parse_concurrency(spec: str) -> list[int]:
    """``"1,4,16,64"`` -> ``[1, 4, 16, 64]`` (each >= 1)."""
    try:
        levels = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInputError(f"--concurrency {spec!r} is not a list of integers") from exc
    if not levels or min(levels) < 1:
        raise InvalidInputError(f"--concurrency {spec!r}: give integers >= 1, e.g. 1,4,16,64")
    return levels


def check_loopback(server: str) -> None:
    """Refuse anything but a loopback ``host:port`` (localhost, 127.0.0.0/8, ::1)."""
    match = re.fullmatch(r"\[?(?P<host>[^\]]+?)\]?:(?P<port>\d+)", server.strip())
    if not match:
        raise InvalidInputError(f"--server {server!r} is not host:port")
    host = match["host"]
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise InvalidInputError(
        f"--server {server!r}: bench load only targets a loopback server (127.0.0.1, ::1, localhost)"
    )


async def run_level(
    extract: Callable[[str], Any],
    texts: Sequence[str],
    concurrency: int,
    duration_s: float,
    label: str = "padellm",
    max_requests: int = MAX_REQUESTS_PER_LEVEL,
    counters: Counters | None = None,
) -> LevelResult:
    """``concurrency`` closed-loop workers calling ``await extract(text)`` for ``duration_s``.

    Requests already in flight when the time is up are awaited and counted (their
    latency is real), so ``elapsed_s`` runs to the last answer. ``counters`` (the
    engine's, ``ENGINE_COUNTERS`` keys) are read before and after: the level's share.
    """
    if not texts:
        raise InvalidInputError("no sentences to send")
    # NOTE: read while nothing is in flight (before the first request, after the last
    # answer), so a blocking scrape delays no request
    before = _read(counters)
    result = LevelResult(label, concurrency, 0.0)
    errors: Counter[str] = Counter()
    next_index = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        nonlocal next_index
        while time.perf_counter() < deadline and next_index < max_requests:
            text = texts[next_index % len(texts)]
            next_index += 1
            sent = time.perf_counter()
            try:
                await extract(text)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                errors[type(exc).__name__] += 1
                logger.debug("request failed: %s", exc)
                continue
            result.latencies_ms.append(1000.0 * (time.perf_counter() - sent))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    result.errors = dict(errors)
    after = _read(counters)
    if before is not None and after is not None:
        result.engine = {k: after[k] - before[k] for k in ENGINE_COUNTERS if k in after and k in before}
    return result


def _read(counters: Counters | None) -> dict[str, float] | None:
    if counters is None:
        return None
    try:
        return counters()
    except Exception as exc:  # noqa: BLE001 - counters are extra: the level still counts
        logger.warning("could not read the engine counters: %s", exc)
        return None


def engine_stats_counters(loop: Any) -> Counters:
    """An in-process ``EngineLoop``'s counters."""
    return lambda: {k: float(getattr(loop.stats, k)) for k in ENGINE_COUNTERS}


def metrics_counters(url: str) -> Counters:
    """The served ``llm`` model's counters, scraped from Triton's metrics endpoint
    (Prometheus text; summed over label sets)."""
    from padellm_ner.engine_metrics import ENGINE_METRICS
    from padellm_ner.prom_text import metric_sum, read_samples

    def read() -> dict[str, float]:
        samples = read_samples(url)
        sums = {key: metric_sum(samples, ENGINE_METRICS[key][0]) for key in ENGINE_COUNTERS}
        return {key: value for key, value in sums.items() if value is not None}

    return read


async def run_load(
    extract: Callable[[str], Any],
    texts: Sequence[str],
    concurrencies: Sequence[int],
    duration_s: float,
    label: str = "padellm",
    max_requests: int = MAX_REQUESTS_PER_LEVEL,
    counters: Counters | None = None,
) -> list[LevelResult]:
    """Every level in turn, one short warm-up request first."""
    try:
        await extract(texts[0])
    except Exception as exc:  # noqa: BLE001 - reported by the levels too
        logger.warning("warm-up request failed: %s", exc)
    results = []
    for concurrency in concurrencies:
        logger.info("concurrency %d for %.1f s", concurrency, duration_s)
        results.append(
            await run_level(
                extract, texts, concurrency, duration_s, label, max_requests, counters
            )
        )
    return results


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def load_table(summaries: Sequence[dict[str, Any]], title: str) -> report.Table:
    table = report.Table(
        title=title,
        columns=[
            "server",
            "concurrency",
            "requests",
            "errors",
            "sentences/s",
            "mean ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "forwards/sentence",
            "rows/decode step",
            "prefill padding",
        ],
    )
    for s in summaries:
        table.rows.append(
            [
                s["label"],
                str(s["concurrency"]),
                str(s["num_ok"]),
                str(s["num_errors"]),
                _fmt(s["throughput"], ".2f"),
                _fmt(s["mean_ms"]),
                _fmt(s["p50_ms"]),
                _fmt(s["p90_ms"]),
                _fmt(s["p99_ms"]),
                _fmt(s.get("forwards_per_sentence"), ".2f"),
                _fmt(s.get("rows_per_decode_step")),
                "-" if s.get("prefill_padding") is None else f"{100 * s['prefill_padding']:.0f}%",
            ]
        )
    table.notes.append(
        "Closed loop: each of `concurrency` workers sends its next sentence when its answer "
        "arrives; sentences/s counts successful answers over the level's wall time. "
        "forwards/sentence, rows/decode step and prefill padding come from the LLM engine's "
        "counters over the level (in process, or the `llm` model's metrics with "
        "`--metrics-url`; `-` when not read): batching at work."
    )
    return table


def _points(
    summaries: Sequence[dict[str, Any]],
) -> dict[str, list[tuple[int, float, float, float]]]:
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for s in summaries:
        if s["p50_ms"] is None:
            continue
        series.setdefault(s["label"], []).append(
            (s["concurrency"], s["throughput"], s["p50_ms"], s["p99_ms"])
        )
    return series


def write_load_report(
    out_dir: Path,
    label: str,
    results: Sequence[LevelResult],
    machine: report.MachineInfo,
    command: str,
    extra_header: dict[str, str] | None = None,
) -> dict[str, Path]:
    """``load_<label>.md/.png/.json``, then ``load_compare.md/.png`` over every label."""
    summaries = [{**r.summary(), "label": label} for r in results]
    table = load_table(summaries, f"Load: {label}")
    report.print_table(table)
    stem = f"load_{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}"
    md = report.render_markdown(
        "PaDeLLM-NER load benchmark", machine, command, [table], extra_header
    )
    paths = {
        "markdown": report.write_markdown(out_dir / f"{stem}.md", md),
        "chart": report.plot_load(out_dir / f"{stem}.png", _points(summaries), f"Load: {label}"),
        "json": report.write_json(
            out_dir / f"{stem}.json",
            {
                "machine": machine.to_dict(),
                "command": command,
                **({"header": extra_header} if extra_header else {}),
                "summary": summaries,
                "latencies_ms": {str(r.concurrency): r.latencies_ms for r in results},
            },
        ),
    }
    merged: list[dict[str, Any]] = []
    for path in sorted(out_dir.glob("load_*.json")):
        try:
            merged += json.loads(path.read_text())["summary"]
        except (OSError, ValueError, KeyError):
            logger.warning("skipping unreadable %s", path)
    if len({s["label"] for s in merged}) > 1:
        compare = load_table(merged, "Load: every server measured into this folder")
        paths["compare_markdown"] = report.write_markdown(
            out_dir / "load_compare.md",
            report.render_markdown("PaDeLLM-NER load comparison", machine, command, [compare]),
        )
        paths["compare_chart"] = report.plot_load(
            out_dir / "load_compare.png", _points(merged), "Load comparison"
        )
    return paths


def run_load_cli(args: Any) -> int:
    """``padellm-ner bench load``: against ``--server``, or in process with ``--model``."""
    from padellm_ner.data import load_split

    model = getattr(args, "model", None)
    given = flags_given(args, dict.fromkeys(IN_PROCESS_DEFAULTS))
    if not model:
        if given:
            raise InvalidInputError(
                f"{', '.join(given)}: options of an in-process run (--model); with --server "
                f"the served model decides (padellm-ner serve {given[0]} ...)"
            )
        check_loopback(args.server)
    elif getattr(args, "metrics_url", None):
        raise InvalidInputError(
            "--metrics-url reads a server's counters; with --model the engine's own are reported"
        )
    else:
        fill_unset(args, IN_PROCESS_DEFAULTS)
    report.output_dir(args.out)
    levels = parse_concurrency(args.concurrency)
    texts = [ex.text for ex in load_split(args.dataset, "test") if ex.text.strip()]
    texts = texts[: args.limit] if args.limit else texts
    if not texts:
        raise InvalidInputError(f"{args.dataset}/test has no sentences")
    label = getattr(args, "label", None) or ("in-process" if model else args.model_name)
    machine = report.machine_info()  # NOTE: before the run: the commit of the code that ran
    if model:
        results = _run_in_process(args, texts, levels, label)
        where = f"in process, model `{model}` (engine + plan, no Triton)"
    else:
        results = _run_served(args, texts, levels, label)
        where = f"{args.server}, model `{args.model_name}`"
    extra = {
        "Server": where,
        "Sentences": f"{args.dataset}/test, {len(texts)} in rotation",
        "Levels": f"{', '.join(map(str, levels))} concurrent, {args.duration:g} s each",
    }
    keys = _COMMAND_KEYS
    if model:
        keys = ("model", "device", "dtype", "batch_window_us") + tuple(
            k for k in keys if k not in ("server", "model_name")
        )
    paths = write_load_report(
        Path(args.out), label, results, machine, report.format_command(args, keys), extra
    )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _run_served(args: Any, texts: list[str], levels: list[int], label: str) -> list[LevelResult]:
    try:
        from padellm_client import AsyncNERClient
    except ImportError as exc:
        raise InvalidInputError("bench load needs padellm_client: pip install -e .") from exc
    url = getattr(args, "metrics_url", None)
    counters = metrics_counters(url) if url else None

    async def main() -> list[LevelResult]:
        async with AsyncNERClient(
            args.server, model_name=args.model_name, timeout=REQUEST_TIMEOUT
        ) as client:
            if not await client.is_ready():
                raise InvalidInputError(
                    f"server {args.server} is not ready (model {args.model_name!r})"
                )
            return await run_load(client.extract, texts, levels, args.duration, label,
                                  counters=counters)

    return asyncio.run(main())


def _run_in_process(
    args: Any, texts: list[str], levels: list[int], label: str
) -> list[LevelResult]:
    """The served arrival pattern without Triton: every worker's requests join one
    ``EngineLoop`` (with the served ``llm`` model's batching window)."""
    from padellm_ner.engine import AsyncEngineLLM, EngineLoop
    from padellm_ner.extraction import Extractor

    extractor = Extractor.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    loop = EngineLoop(extractor.llm.core, batch_window_s=args.batch_window_us / 1e6)
    llm = AsyncEngineLLM(loop)

    async def extract(text: str) -> list:
        return (await asyncio.wait_for(extractor.aextract(text, llm), REQUEST_TIMEOUT)).entities

    try:
        return asyncio.run(
            run_load(extract, texts, levels, args.duration, label,
                     counters=engine_stats_counters(loop))
        )
    finally:
        loop.shutdown()
