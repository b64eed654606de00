"""``bench latency``: PaDeLLM (Batch and Multi) against the baselines, one sentence at a time.

Protocol (METHOD.md): batch size 1 per sentence, wall clock around generation only
(tokenization excluded, device synchronised), averaged over the test sentences. Every
model is loaded once; for each sentence every method runs in turn (interleaved, the
starting method rotating per sentence) so machine drift and order effects hit all alike.
Each timed run starts with the engine's prefix cache empty: PaDeLLM's two modes share one
engine, and a run must not find the sentence prefix that the other mode left behind.

- PaDeLLM (Batch): the normal ``Extractor`` - all counts in one batch, then all mentions
  in one batch; latency = time inside the two ``generate`` calls.
- PaDeLLM (Multi): every branch on its own device, emulated by decoding each request
  alone (batch of one) and composing ``max over labels of (count + slowest mention)``.
- Baselines: the ``Extractor`` with the baseline's method; latency = its ``generate`` call.
- PaDeLLM (served), with ``--server``: ``padellm_client.NERClient.extract`` end to end.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padellm_ner.bench import report
from padellm_ner.errors import InvalidInputError
from padellm_ner.extraction import Extractor
from padellm_ner.llm import LLM, GenerationRequest, GenerationResult
from padellm_ner.metrics import evaluate_predictions
from padellm_ner.types import Entity, Example

__all__ = [
    "METHODS",
    "DISPLAY_NAMES",
    "TimingLLM",
    "SentenceRun",
    "MethodSummary",
    "LatencyResult",
    "parse_models",
    "load_extractors",
    "run_latency",
    "summarize",
    "latency_table",
    "write_latency_report",
    "run_latency_cli",
]

logger = logging.getLogger(__name__)

METHODS = ("padellm", "ar_struct", "ar_aug", "onestep")
PADELLM_BATCH = "padellm"
PADELLM_MULTI = "padellm_multi"
SERVED = "padellm_served"
#: Row key -> the name in tables and charts (the paper's names).
DISPLAY_NAMES = {
    PADELLM_BATCH: "PaDeLLM (Batch)",
    PADELLM_MULTI: "PaDeLLM (Multi)",
    "ar_struct": "AutoReg_Struct",
    "ar_aug": "AutoReg_Aug",
    "onestep": "OneStep",
    SERVED: "PaDeLLM (served)",
}

_COMMAND_KEYS = (
    "dataset",
    "split",
    "limit",
    "models",
    "server",
    "device",
    "dtype",
    "max_new_tokens",
    "warmup",
    "out",
    "name",
)


def _sync() -> None:
    """Wait for queued device work so the clock reads finished work (CUDA only)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass(frozen=True)
class TimedCall:
    """One timed ``generate``: its request (None: a whole batch in one call), its wall
    time and the engine forwards it took (None where the LLM does not count them)."""

    request: GenerationRequest | None
    seconds: float
    forwards: int | None


class TimingLLM:
    """An ``LLM`` proxy that times every ``generate`` call of the wrapped LLM.

    Args:
        inner: the LLM doing the work.
        serial: decode each request alone (a batch of one) and time it on its own:
            the PaDeLLM_Multi emulation. Otherwise the batch goes through as one call.
        count_forwards: reads the engine's forward counter (None: not counted).

    ``calls`` holds, per ``generate`` call, one ``TimedCall`` per request when
    ``serial``; else one for the whole batch.
    """

    def __init__(
        self,
        inner: LLM,
        serial: bool = False,
        count_forwards: Callable[[], int | None] | None = None,
    ) -> None:
        self.inner = inner
        self.serial = serial
        self.count_forwards = count_forwards or (lambda: None)
        self.calls: list[list[TimedCall]] = []

    def reset(self) -> None:
        self.calls = []

    @property
    def total_seconds(self) -> float:
        return sum(t.seconds for call in self.calls for t in call)

    def costs(self, name: str) -> list[list[tuple[GenerationRequest | None, Any]]]:
        """``calls`` as ``(request, cost)`` pairs of one field, as ``multi_latency`` reads them."""
        return [[(t.request, getattr(t, name)) for t in call] for call in self.calls]

    def _timed(self, requests: Sequence[GenerationRequest]) -> tuple[list[GenerationResult], TimedCall]:
        before = self.count_forwards()
        _sync()
        start = time.perf_counter()
        results = self.inner.generate(requests)
        _sync()
        seconds = time.perf_counter() - start
        after = self.count_forwards()
        forwards = None if before is None or after is None else after - before
        return results, TimedCall(requests[0] if self.serial else None, seconds, forwards)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self.serial:
            results, timed = self._timed(requests)
            self.calls.append([timed])
            return results
        results, timings = [], []
        for request in requests:
            (result,), timed = self._timed([request])
            results.append(result)
            timings.append(timed)
        self.calls.append(timings)
        return results

    def critical_path_forwards(self) -> int | None:
        """Forwards on the critical path: all of them (one batch), or the slowest branch's."""
        forwards = self.costs("forwards")
        if any(num is None for call in forwards for _req, num in call):
            return None
        if not self.serial:
            return sum(num for call in forwards for _req, num in call)
        return int(multi_latency(forwards))


def multi_latency(calls: Sequence[Sequence[tuple[GenerationRequest | None, float]]]) -> float:
    """PaDeLLM_Multi latency from serially timed plan calls: the slowest branch.

    Any per-request cost composes the same way (``TimingLLM.costs("forwards")``).

    ``calls[0]`` are the count requests (one per label); ``calls[1]``, when present, the
    mention requests. A mention belongs to the label whose count prompt starts its prompt
    (the mention prompt is the count prompt plus ``{n}\\n<mention k>``).
    """
    if not calls:
        return 0.0
    counts = list(calls[0])
    branch = [seconds for _req, seconds in counts]  # per label: count + slowest mention
    slowest_mention = [0.0] * len(counts)
    for request, seconds in calls[1] if len(calls) > 1 else []:
        owner = max(
            (
                i
                for i, (count_req, _s) in enumerate(counts)
                if count_req is not None
                and request is not None
                and request.prompt_ids[: len(count_req.prompt_ids)] == count_req.prompt_ids
            ),
            key=lambda i: len(counts[i][0].prompt_ids),
            default=None,
        )
        if owner is None:  # NOTE: cannot happen with the plan; count it against all.
            slowest_mention = [max(m, seconds) for m in slowest_mention]
            continue
        slowest_mention[owner] = max(slowest_mention[owner], seconds)
    return max((c + m for c, m in zip(branch, slowest_mention)), default=0.0)


@dataclass
class SentenceRun:
    """One method on one sentence."""

    ms: float
    entities: list[Entity]
    num_generated_tokens: int | None = None
    num_sequences: int | None = None
    critical_path_steps: int | None = None
    # engine forwards (prefill + decode) on the critical path: Multi, the slowest branch's
    num_forwards: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "entities"}
        out["entities"] = [e.to_dict() for e in self.entities]
        return out


@dataclass
class LatencyResult:
    """Raw per-sentence runs: ``runs[row_key][i]`` is sentence ``i``."""

    examples: list[Example]
    runs: dict[str, list[SentenceRun]] = field(default_factory=dict)


@dataclass
class MethodSummary:
    """One table row."""

    key: str
    name: str
    mean_ms: float
    median_ms: float
    f1: float  # paper micro-F1, percent
    span_f1: float  # span micro-F1, percent
    tokens_per_sequence: float | None
    sequences_per_sentence: float | None
    critical_path_steps: float | None
    forwards: float | None = None  # critical-path forward passes (prefill included), mean
    vs_batch: float | None = None  # mean / PaDeLLM (Batch) mean
    step_bound: float | None = None  # steps / PaDeLLM (Batch) steps
    forward_bound: float | None = None  # forwards / PaDeLLM (Batch) forwards
    achieved_of_bound: float | None = None  # vs_batch / step_bound

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def parse_models(spec: str) -> dict[str, str]:
    """``padellm=DIR,ar_struct=DIR`` -> ``{method: dir}`` in the given order."""
    models: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        method, sep, path = item.partition("=")
        method, path = method.strip(), path.strip()
        if not sep or not path:
            raise InvalidInputError(f"--models item {item!r} is not METHOD=DIR")
        if method not in METHODS:
            raise InvalidInputError(
                f"--models: unknown method {method!r}; use one of {', '.join(METHODS)}"
            )
        if method in models:
            raise InvalidInputError(f"--models names {method!r} twice")
        models[method] = path
    if not models:
        raise InvalidInputError("--models is empty; pass METHOD=DIR[,METHOD=DIR...]")
    return models


def load_extractors(
    models: dict[str, str],
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int | None = None,
) -> dict[str, Extractor]:
    """One ``Extractor`` per method; a folder named twice is loaded once and shared."""
    loaded: dict[str, Extractor] = {}
    extractors: dict[str, Extractor] = {}
    for method, path in models.items():
        if path in loaded:
            first = loaded[path]
            ex = Extractor(
                first.llm, first.codec, first.info, method=method, plan_config=first.plan_config
            )
        else:
            logger.info("loading %s for %s", path, method)
            ex = Extractor.from_pretrained(path, device=device, dtype=dtype, method=method)
            loaded[path] = ex
        if max_new_tokens is not None:
            ex.max_new_tokens = max_new_tokens
        if ex.info.trained and ex.info.format != method:
            # NOTE: allowed (an untrained base may stand in for every method), but a
            # trained model decoded in another format's prompts scores near zero
            print(f"warning: --models {method}={path}: that model was trained for "
                  f"{ex.info.format}; it is timed and scored as {method}", file=sys.stderr)
        extractors[method] = ex
    return extractors


def _forwards(llm: Any) -> int | None:
    core = getattr(llm, "core", None)
    return core.stats.num_forwards if core is not None else None


def _reset_prefix_cache(llm: Any) -> None:
    core = getattr(llm, "core", None)
    if core is not None:
        core.reset_prefix_cache()


def _timed_extractor(ex: Extractor, serial: bool) -> tuple[Extractor, TimingLLM]:
    proxy = TimingLLM(ex.llm, serial=serial, count_forwards=lambda: _forwards(ex.llm))
    timed = Extractor(
        proxy,
        ex.codec,
        ex.info,
        method=ex.method,
        plan_config=ex.plan_config,
        max_new_tokens=ex.max_new_tokens,
    )
    return timed, proxy


def run_latency(
    extractors: dict[str, Extractor],
    examples: Sequence[Example],
    labels: Sequence[str],
    lang: str,
    served: Callable[[str], list[Entity]] | None = None,
    num_warmup: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyResult:
    """Time every method on every sentence, interleaved.

    Args:
        extractors: method -> Extractor (``padellm`` also gives the Multi row).
        examples: the sentences (gold entities for F1).
        labels: tags to ask for.
        lang: prompt language.
        served: optional ``text -> entities`` through the server (timed end to end).
        num_warmup: untimed runs of every method on the first sentence first.
    """
    jobs: list[tuple[str, Callable[[str], SentenceRun]]] = []
    for method, ex in extractors.items():
        if method == PADELLM_BATCH:
            jobs.append((PADELLM_BATCH, _job(ex, serial=False, labels=labels, lang=lang)))
            jobs.append((PADELLM_MULTI, _job(ex, serial=True, labels=labels, lang=lang)))
        else:
            jobs.append((method, _job(ex, serial=False, labels=labels, lang=lang)))
    if served is not None:
        jobs.append((SERVED, _served_job(served)))

    result = LatencyResult(list(examples), {key: [] for key, _ in jobs})
    for _ in range(num_warmup if examples else 0):
        for _key, job in jobs:
            job(examples[0].text)
    for i, example in enumerate(examples):
        # NOTE: rotate the starting method so no method always runs first (cache state).
        order = jobs[i % len(jobs) :] + jobs[: i % len(jobs)]
        for key, job in order:
            result.runs[key].append(job(example.text))
        if progress is not None:
            progress(i + 1, len(examples))
    return result


def _job(
    ex: Extractor, serial: bool, labels: Sequence[str], lang: str
) -> Callable[[str], SentenceRun]:
    timed, proxy = _timed_extractor(ex, serial)

    def run(text: str) -> SentenceRun:
        _reset_prefix_cache(ex.llm)
        proxy.reset()
        out = timed.extract(text, labels=labels, lang=lang)
        seconds = multi_latency(proxy.costs("seconds")) if serial else proxy.total_seconds
        if ex.method == PADELLM_BATCH:
            steps = out.critical_path_steps if serial else out.critical_path_steps_batch
        else:
            steps = out.critical_path_steps
        return SentenceRun(
            ms=1000.0 * seconds,
            entities=list(out.entities),
            num_generated_tokens=out.num_generated_tokens,
            num_sequences=out.num_sequences,
            critical_path_steps=steps,
            num_forwards=proxy.critical_path_forwards(),
        )

    return run


def _served_job(served: Callable[[str], list[Entity]]) -> Callable[[str], SentenceRun]:
    def run(text: str) -> SentenceRun:
        start = time.perf_counter()
        entities = served(text)
        return SentenceRun(ms=1000.0 * (time.perf_counter() - start), entities=entities)

    return run


def _mean(values: Sequence[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarize(result: LatencyResult) -> list[MethodSummary]:
    """One row per method, with ratios against PaDeLLM (Batch) when it was run."""
    gold = [ex.entities for ex in result.examples]
    rows: list[MethodSummary] = []
    for key, runs in result.runs.items():
        if not runs:
            continue
        ms = [r.ms for r in runs]
        f1 = evaluate_predictions(gold, [r.entities for r in runs])
        tokens = [r.num_generated_tokens for r in runs if r.num_generated_tokens is not None]
        seqs = [r.num_sequences for r in runs if r.num_sequences is not None]
        rows.append(
            MethodSummary(
                key=key,
                name=DISPLAY_NAMES.get(key, key),
                mean_ms=statistics.fmean(ms),
                median_ms=statistics.median(ms),
                f1=100 * f1.micro.f1,
                span_f1=100 * f1.span_micro.f1,
                tokens_per_sequence=sum(tokens) / sum(seqs) if seqs and sum(seqs) else None,
                sequences_per_sentence=_mean(seqs),
                critical_path_steps=_mean([r.critical_path_steps for r in runs]),
                forwards=_mean([r.num_forwards for r in runs]),
            )
        )
    ref = next((row for row in rows if row.key == PADELLM_BATCH), None)
    for row in rows:
        if ref is None:
            break
        if ref.mean_ms > 0:
            row.vs_batch = row.mean_ms / ref.mean_ms
        if row.critical_path_steps is not None and ref.critical_path_steps:
            row.step_bound = row.critical_path_steps / ref.critical_path_steps
        if row.forwards is not None and ref.forwards:
            row.forward_bound = row.forwards / ref.forwards
        if row.vs_batch is not None and row.step_bound:
            row.achieved_of_bound = row.vs_batch / row.step_bound
    return rows


COLUMNS = [
    "method",
    "mean ms",
    "median ms",
    "x PaDeLLM (Batch)",
    "F1",
    "span F1",
    "tokens/seq",
    "seqs/sentence",
    "critical-path steps",
    "step bound",
    "achieved / bound",
    "forwards",
    "forward bound",
]


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def latency_table(rows: Sequence[MethodSummary], num_sentences: int) -> report.Table:
    table = report.Table(
        title=f"Latency, one sentence at a time ({num_sentences} sentences)",
        columns=list(COLUMNS),
    )
    for row in rows:
        table.rows.append(
            [
                row.name,
                _fmt(row.mean_ms),
                _fmt(row.median_ms),
                _fmt(row.vs_batch, suffix="x"),
                _fmt(row.f1),
                _fmt(row.span_f1),
                _fmt(row.tokens_per_sequence),
                _fmt(row.sequences_per_sentence),
                _fmt(row.critical_path_steps),
                _fmt(row.step_bound, suffix="x"),
                _fmt(row.achieved_of_bound),
                _fmt(row.forwards),
                _fmt(row.forward_bound, suffix="x"),
            ]
        )
    by_key = {row.key: row for row in rows}
    batch, served = by_key.get(PADELLM_BATCH), by_key.get(SERVED)
    if batch and served:
        table.notes.append(
            f"Orchestrator overhead (served mean - in-process Batch mean): "
            f"{served.mean_ms - batch.mean_ms:.2f} ms per sentence "
            "(includes tokenization, gRPC and Triton scheduling)."
        )
    table.notes.append(
        "x PaDeLLM (Batch) = mean / PaDeLLM (Batch) mean (a baseline's value is PaDeLLM's "
        "speed-up over it); step bound = critical-path steps / PaDeLLM (Batch) steps; "
        "achieved / bound = the two divided (1.00 = the speed-up the step counts allow); "
        "forwards = forward passes on the critical path, prefill ones included (Multi: the "
        "slowest branch's), forward bound = forwards / PaDeLLM (Batch) forwards."
    )
    return table


def write_latency_report(
    out_dir: Path,
    name: str,
    result: LatencyResult,
    rows: Sequence[MethodSummary],
    machine: report.MachineInfo,
    command: str,
    extra_header: dict[str, str] | None = None,
) -> dict[str, Path]:
    """``<name>.md``, ``<name>.png`` and ``<name>.json`` under ``out_dir``."""
    table = latency_table(rows, len(result.examples))
    report.print_table(table)
    md = report.render_markdown(
        "PaDeLLM-NER latency benchmark", machine, command, [table], extra_header
    )
    paths = {
        "markdown": report.write_markdown(out_dir / f"{name}.md", md),
        "chart": report.plot_latency_bars(
            out_dir / f"{name}.png",
            [row.name for row in rows],
            [row.mean_ms for row in rows],
            reference=DISPLAY_NAMES[PADELLM_BATCH],
            title=f"Mean latency per sentence ({len(result.examples)} sentences)",
        ),
    }
    raw = {
        "machine": machine.to_dict(),
        "command": command,
        **({"header": extra_header} if extra_header else {}),
        "summary": [row.to_dict() for row in rows],
        "sentences": [
            {
                "id": ex.id,
                "text": ex.text,
                "gold": [e.to_dict() for e in ex.entities],
                "runs": {key: runs[i].to_dict() for key, runs in result.runs.items()},
            }
            for i, ex in enumerate(result.examples)
        ],
    }
    paths["json"] = report.write_json(out_dir / f"{name}.json", raw)
    return paths


def _served_extract(
    server: str, labels: Sequence[str]
) -> tuple[Callable[[str], list[Entity]], Any]:
    try:
        from padellm_client import NERClient
    except ImportError as exc:
        raise InvalidInputError(
            "--server needs the client package: pip install -e . (padellm_client)"
        ) from exc
    try:
        client = NERClient(server)
    except ValueError as exc:  # NOTE: not host:port, a port out of range
        raise InvalidInputError(f"--server: {exc}") from exc
    if not client.is_ready():
        client.close()
        raise InvalidInputError(f"server {server} is not ready (model 'padellm')")

    def extract(text: str) -> list[Entity]:
        return [
            Entity(e.label, e.text, e.start, e.end, e.score)
            for e in client.extract(text, labels=list(labels))
        ]

    return extract, client


def run_latency_cli(args: Any) -> int:
    """``padellm-ner bench latency``."""
    from padellm_ner.data import dataset_info, load_split

    models = parse_models(args.models)
    report.output_dir(args.out)
    info = dataset_info(args.dataset)
    examples = [ex for ex in load_split(args.dataset, args.split) if ex.text.strip()]
    examples = examples[: args.limit] if args.limit else examples
    if not examples:
        raise InvalidInputError(f"{args.dataset}/{args.split} has no sentences")
    max_new_tokens = getattr(args, "max_new_tokens", None)
    extractors = load_extractors(models, args.device, args.dtype, max_new_tokens)
    for ex in extractors.values():
        # NOTE: as evaluate: the model's own label words win, the dataset's fill in the rest
        # (a tag the model does not record was asked as itself here, as its word there)
        ex.info.label_words = {**info.label_words, **ex.info.label_words}
    core = getattr(next(iter(extractors.values())).llm, "core", None)
    device = str(core.runner.device) if core is not None else args.device

    served, client = (None, None)
    if args.server:
        served, client = _served_extract(args.server, info.labels)
    from tqdm import tqdm

    # NOTE: taken before the run, so the commit is the code that ran, not a later one.
    machine = report.machine_info(device)
    bar = tqdm(total=len(examples), desc="bench latency", unit="sentence", mininterval=5)

    def progress(i: int, n: int) -> None:
        bar.update(i - bar.n)

    try:
        result = run_latency(
            extractors,
            examples,
            info.labels,
            info.lang,
            served=served,
            num_warmup=getattr(args, "warmup", 1),
            progress=progress,
        )
    finally:
        bar.close()
        if client is not None:
            client.close()
    rows = summarize(result)
    name = getattr(args, "name", None) or (
        f"latency_{Path(args.dataset).name}_{args.split}_{len(examples)}_{device.split(':')[0]}"
    )
    extra = {
        "Device": device,
        "Dataset": f"{args.dataset} / {args.split}, {len(examples)} sentences, labels "
        + ", ".join(info.labels),
        "Models": ", ".join(f"{m} = `{p}`" for m, p in models.items()),
    }
    if args.server:
        extra["Server"] = args.server
    paths = write_latency_report(
        Path(args.out),
        name,
        result,
        rows,
        machine,
        report.format_command(args, _COMMAND_KEYS),
        extra,
    )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
