"""``padellm-ner evaluate``: the paper's micro-F1, span F1, and decode cost on a split."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from padellm_ner.cli_types import flags_given
from padellm_ner.errors import InvalidInputError
from padellm_ner.extraction import ExtractionOutput, Extractor
from padellm_ner.metrics import F1Report, Score, evaluate_predictions
from padellm_ner.types import Entity, Example

__all__ = ["EvalResult", "evaluate_model", "merge_results", "parse_hedges", "result_from_dict", "run_evaluate"]


@dataclass
class EvalResult:
    """Scores plus the decoding cost the paper reports next to them."""

    report: F1Report
    mean_critical_path_steps: float
    mean_critical_path_steps_batch: float
    mean_tokens_per_sequence: float
    mean_sequences_per_sentence: float
    count_accuracy: float | None  # PaDeLLM: share of (sentence, label) counts that are right
    # NOTE: the wrong counts split by direction: too low always costs recall; too high
    # costs nothing when the extra branch repeats a mention (de-dup drops it), else precision.
    count_too_low: float | None = None
    count_too_high: float | None = None
    count_hedge: float | None = None  # PaDeLLM: the threshold these entities were resolved at
    hedge_branches: float | None = None  # PaDeLLM: hedge branches per sentence at it
    # NOTE: a threshold sweep (one decode at the highest, resolved at each): the
    # entities differ per threshold, the decode cost fields are the decode's.
    sweep: list[EvalResult] = field(default_factory=list)
    # NOTE: which sentences these are (``run_evaluate`` sets it): model, dataset, split,
    # first sentence and count, so ``--merge`` can refuse shards that do not fit together
    shard: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out.update(
            mean_critical_path_steps=self.mean_critical_path_steps,
            mean_critical_path_steps_batch=self.mean_critical_path_steps_batch,
            mean_tokens_per_sequence=self.mean_tokens_per_sequence,
            mean_sequences_per_sentence=self.mean_sequences_per_sentence,
            count_accuracy=self.count_accuracy,
            count_too_low=self.count_too_low,
            count_too_high=self.count_too_high,
            count_hedge=self.count_hedge,
            hedge_branches=self.hedge_branches,
        )
        if self.sweep:
            out["sweep"] = [part.to_dict() for part in self.sweep]
        if self.shard is not None:
            out["shard"] = dict(self.shard)
        return out

    def format_text(self) -> str:
        lines = [self.report.format_table()]
        lines.append(
            f"critical-path decode steps: {self.mean_critical_path_steps:.2f} (Multi), "
            f"{self.mean_critical_path_steps_batch:.2f} (Batch); generated tokens per "
            f"sequence: {self.mean_tokens_per_sequence:.2f}; sequences per sentence: "
            f"{self.mean_sequences_per_sentence:.2f}"
        )
        if self.count_accuracy is not None:
            line = f"per-label count right: {100 * self.count_accuracy:.2f}%"
            if self.count_too_low is not None and self.count_too_high is not None:
                line += (f" (too low {100 * self.count_too_low:.2f}%,"
                         f" too high {100 * self.count_too_high:.2f}%)")
            lines.append(line)
        if self.count_hedge:
            lines.append(f"count hedge below {self.count_hedge:g}: "
                         f"{self.hedge_branches or 0:.2f} extra branches per sentence")
        if self.sweep:
            lines.append(self.format_sweep())
        return "\n".join(lines)

    def format_sweep(self) -> str:
        """The threshold sweep as a table: scores and extra branches per threshold."""
        lines = [f"{'count_hedge':>11} {'P':>6} {'R':>6} {'F1':>6} {'span F1':>7} {'hedges/sent':>11}"]
        for part in self.sweep:
            m, span = part.report.micro, part.report.span_micro
            lines.append(
                f"{part.count_hedge or 0:11g} {100 * m.precision:6.2f} {100 * m.recall:6.2f}"
                f" {100 * m.f1:6.2f} {100 * span.f1:7.2f} {part.hedge_branches or 0:11.2f}"
            )
        return "\n".join(lines)


def _score(d: dict[str, Any]) -> Score:
    return Score(int(d["tp"]), int(d["fp"]), int(d["fn"]))


def result_from_dict(data: dict[str, Any]) -> EvalResult:
    """An ``EvalResult`` back from its ``to_dict`` form (``evaluate --json`` output)."""
    report = F1Report(
        micro=_score(data["set"]["micro"]),
        per_label={k: _score(v) for k, v in data["set"]["per_label"].items()},
        span_micro=_score(data["span"]["micro"]),
        span_per_label={k: _score(v) for k, v in data["span"]["per_label"].items()},
        num_sentences=int(data["num_sentences"]),
    )
    return EvalResult(
        report,
        float(data["mean_critical_path_steps"]),
        float(data["mean_critical_path_steps_batch"]),
        float(data["mean_tokens_per_sequence"]),
        float(data["mean_sequences_per_sentence"]),
        _optional(data, "count_accuracy"),
        _optional(data, "count_too_low"),
        _optional(data, "count_too_high"),
        _optional(data, "count_hedge"),
        _optional(data, "hedge_branches"),
        [result_from_dict(part) for part in data.get("sweep") or []],
        dict(data["shard"]) if isinstance(data.get("shard"), dict) else None,
    )


def _optional(data: dict[str, Any], key: str) -> float | None:
    """A share that older reports (or AutoReg models) do not have."""
    return None if data.get(key) is None else float(data[key])


def merge_results(parts: Sequence[EvalResult]) -> EvalResult:
    """One result for shards of a split (``--skip``/``--limit`` runs): counts are summed,
    means are weighted by sentences (tokens per sequence by sequences)."""
    if not parts:
        raise InvalidInputError("nothing to merge")
    shard = _merged_shard([p.shard for p in parts])
    report = F1Report()
    for part in parts:
        r = part.report
        report.num_sentences += r.num_sentences
        for into, add in ((report.micro, r.micro), (report.span_micro, r.span_micro)):
            into.add(add.tp, add.fp, add.fn)
        for into, add in ((report.per_label, r.per_label), (report.span_per_label, r.span_per_label)):
            for label, score in add.items():
                into.setdefault(label, Score()).add(score.tp, score.fp, score.fn)
    n = report.num_sentences or 1
    seqs = [p.mean_sequences_per_sentence * p.report.num_sentences for p in parts]
    hedges = {p.count_hedge for p in parts}
    if len(hedges) > 1:
        raise InvalidInputError(f"the shards were resolved at different count_hedge values: {sorted(map(str, hedges))}")
    taus = {tuple(s.count_hedge for s in p.sweep) for p in parts}
    if len(taus) > 1:
        raise InvalidInputError("the shards swept different count_hedge thresholds")
    sweep = [merge_results([p.sweep[i] for p in parts]) for i in range(len(parts[0].sweep))]

    def mean(attr: str) -> float:
        return sum(getattr(p, attr) * p.report.num_sentences for p in parts) / n

    def share(attr: str) -> float | None:
        counted = [p for p in parts if getattr(p, attr) is not None]
        if not counted:
            return None
        weight = sum(p.report.num_sentences for p in counted) or 1
        return sum(getattr(p, attr) * p.report.num_sentences for p in counted) / weight

    return EvalResult(
        report,
        mean("mean_critical_path_steps"),
        mean("mean_critical_path_steps_batch"),
        sum(p.mean_tokens_per_sequence * s for p, s in zip(parts, seqs)) / (sum(seqs) or 1),
        sum(seqs) / n,
        share("count_accuracy"),
        share("count_too_low"),
        share("count_too_high"),
        parts[0].count_hedge,
        share("hedge_branches"),
        sweep,
        shard,
    )


def _merged_shard(shards: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The shards' sentences together, or an error when they are not of one run: another
    model, dataset or split, or sentences counted twice (a file given twice, overlapping
    ``--skip``/``--limit`` ranges). Reports without the record (older ones) merge as before."""
    known = [s for s in shards if s is not None]
    if not known:
        return None
    for key in ("model", "dataset", "split", "labels", "method", "dedup"):
        # NOTE: reports written before a key was recorded do not have it
        values = sorted({json.dumps(s[key]) if isinstance(s[key], list) else str(s[key]) for s in known if key in s})
        if len(values) > 1:
            raise InvalidInputError(f"the shards differ in {key}: {', '.join(values)} (one run's shards merge, not two runs)")
    spans = sorted((int(s["skip"]), int(s["skip"]) + int(s["sentences"])) for s in known)
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise InvalidInputError(
                f"the shards overlap: sentences {a0}..{a1} and {b0}..{b1} (each sentence must be "
                "in one shard, or it is counted twice)"
            )
        if b0 > a1:
            # NOTE: the merged record would say "sentences skip..skip+N" of a range with a hole
            raise InvalidInputError(
                f"the shards leave sentences {a1}..{b0} out (between {a0}..{a1} and {b0}..{b1}); "
                "merge the shards of one contiguous range"
            )
    first = known[0]
    return {
        "model": first.get("model"), "dataset": first.get("dataset"), "split": first.get("split"),
        "skip": spans[0][0], "sentences": sum(b - a for a, b in spans),
        **{key: first[key] for key in ("labels", "method", "dedup") if key in first},
    }  # fmt: skip


class SentenceError(InvalidInputError):
    """The extractor refused sentence ``index`` (of the examples evaluated), e.g. too long."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"sentence #{index}: {why}")
        self.index, self.why = index, why


def _extract_chunk(
    extractor: Extractor, chunk: Sequence[Example], labels: Sequence[str], at: int
) -> list[ExtractionOutput]:
    try:
        return extractor.extract_batch([ex.text for ex in chunk], labels, [ex.lang for ex in chunk])
    except InvalidInputError as exc:
        if len(chunk) == 1:
            raise SentenceError(at, str(exc)) from exc
    # NOTE: which sentence of the batch? Each alone says (only on this error path).
    return [out for j, ex in enumerate(chunk) for out in _extract_chunk(extractor, [ex], labels, at + j)]


def evaluate_model(
    extractor: Extractor,
    examples: Sequence[Example],
    labels: Sequence[str],
    progress: bool = True,
    batch_sentences: int = 1,
) -> EvalResult:
    """Run ``extractor`` over ``examples`` asking for ``labels`` (tags) and score it.

    ``batch_sentences``: sentences decoded together in one engine run. Scores and step
    counts are per sentence and do not depend on it (greedy decoding); throughput does.
    """
    from tqdm import tqdm

    if batch_sentences < 1:
        raise InvalidInputError("--batch-sentences must be >= 1")
    wanted = set(labels)
    gold: list[list[Entity]] = []
    pred: list[list[Entity]] = []
    taus = sorted(extractor.hedge_sweep)
    pred_at: dict[float, list[list[Entity]]] = {tau: [] for tau in taus}
    hedges_at: dict[float, int] = dict.fromkeys(taus, 0)
    num_hedged = 0
    steps = steps_batch = tokens = sequences = 0
    counts_right = counts_total = counts_low = counts_high = 0
    bar = tqdm(total=len(examples), desc="evaluate", unit="sent", disable=not progress)
    outputs: list[ExtractionOutput] = []
    for at in range(0, len(examples), batch_sentences):
        chunk = examples[at : at + batch_sentences]
        outputs += _extract_chunk(extractor, chunk, labels, at)
        bar.update(len(chunk))
    bar.close()
    for ex, out in zip(examples, outputs):
        gold.append([e for e in ex.entities if e.label in wanted])
        pred.append(out.entities)
        num_hedged += len(out.hedged)
        for tau in taus:
            pred_at[tau].append(out.entities_at[tau] if out.entities_at else out.entities)
            hedges_at[tau] += sum(out.count_probs[label] < tau for label in out.hedged)
        steps += out.critical_path_steps
        steps_batch += out.critical_path_steps_batch
        tokens += out.num_generated_tokens
        sequences += out.num_sequences
        if out.counts is not None:
            for label in labels:
                counted, gold_count = out.counts.get(label, 0), len(ex.mentions_of(label))
                counts_total += 1
                counts_right += counted == gold_count
                counts_low += counted < gold_count
                counts_high += counted > gold_count
    n = max(1, len(examples))
    result = EvalResult(
        report=evaluate_predictions(gold, pred),
        mean_critical_path_steps=steps / n,
        mean_critical_path_steps_batch=steps_batch / n,
        mean_tokens_per_sequence=tokens / max(1, sequences),
        mean_sequences_per_sentence=sequences / n,
        count_accuracy=counts_right / counts_total if counts_total else None,
        count_too_low=counts_low / counts_total if counts_total else None,
        count_too_high=counts_high / counts_total if counts_total else None,
    )
    if counts_total:
        result.count_hedge = extractor.plan_config.count_hedge
        result.hedge_branches = num_hedged / n
    result.sweep = [
        replace(result, report=evaluate_predictions(gold, pred_at[tau]), count_hedge=tau,
                hedge_branches=hedges_at[tau] / n, sweep=[])
        for tau in taus
    ]
    return result


def parse_hedges(value: str | None) -> list[float]:
    """``--count-hedge 0.5`` or ``0,0.3,0.5`` (a sweep): thresholds between 0 and 1."""
    if value is None:
        return []
    try:
        taus = sorted({float(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise InvalidInputError(f"--count-hedge {value!r}: give numbers such as 0.5 or 0,0.3,0.5") from None
    if not taus or not all(0.0 <= tau <= 1.0 for tau in taus):
        raise InvalidInputError(f"--count-hedge {value!r}: thresholds must lie between 0 and 1")
    return taus


#: options of a run, which --merge would ignore (attribute -> its unset value)
_RUN_OPTIONS = {"dataset": None, "limit": None, "skip": 0, "labels": None,
                "format": None, "count_hedge": None}  # fmt: skip


def run_evaluate(args: Namespace) -> int:
    from padellm_ner.data import dataset_info, load_split
    from padellm_ner.plan import Dedup, PlanConfig

    if getattr(args, "merge", None):
        given = flags_given(args, _RUN_OPTIONS)
        if given:
            raise InvalidInputError(
                f"--merge combines finished reports; {', '.join(given)} would be ignored (each "
                "shard's own run recorded what it ran)"
            )
        return _run_merge(args)
    if not args.dataset:
        raise InvalidInputError("--dataset is required (or --merge FILE ... to combine shards)")
    info = dataset_info(args.dataset)
    info.require_labels(args.dataset)
    _check_labels(args.labels, info.labels, args.dataset)
    examples = load_split(args.dataset, args.split)
    if not examples:  # NOTE: an F1 of 0 over nothing would read as a result
        raise InvalidInputError(f"{args.dataset}/{args.split} has no sentences")
    skip = int(getattr(args, "skip", 0) or 0)  # NOTE: >= 0 (argparse)
    if skip >= len(examples):
        raise InvalidInputError(
            f"--skip {skip} leaves no sentence: {args.dataset}/{args.split} has {len(examples)}"
        )
    examples = examples[skip:]
    if args.limit is not None:
        examples = examples[: args.limit]
    labels = args.labels or info.labels
    _check_before_loading(args.dataset, args.split, skip, examples, labels, bool(args.labels))
    taus = parse_hedges(getattr(args, "count_hedge", None))
    extractor = Extractor.from_pretrained(
        args.model,
        args.device,
        args.dtype,
        args.max_batch_size,
        method=args.format,
        plan_config=PlanConfig(dedup=Dedup(args.dedup)),
        # NOTE: a sweep decodes once at its highest threshold and resolves at each.
        count_hedge=taus[-1] if taus else None,
    )
    if len(taus) > 1:
        extractor.hedge_sweep = tuple(taus)
    # NOTE: the model's own label words win; the dataset's fill in the rest.
    extractor.info.label_words = {**info.label_words, **extractor.info.label_words}
    # NOTE: the progress bar goes to stderr, so `--json` keeps stdout clean for a file.
    try:
        result = evaluate_model(extractor, examples, labels, batch_sentences=args.batch_sentences)
    except SentenceError as exc:
        where = f"{args.dataset}/{args.split} sentence #{skip + exc.index}"
        raise InvalidInputError(f"{where} ({_clip(examples[exc.index].text)}): {exc.why}") from exc
    result.shard = {"model": _as_given(args.model), "dataset": _as_given(args.dataset),
                    "split": args.split, "skip": skip, "sentences": len(examples),
                    "labels": list(labels), "method": extractor.method,
                    "dedup": args.dedup}  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        where = f" from #{skip}" if skip else ""
        print(f"{args.dataset}/{args.split}: {len(examples)} sentences{where}, model {args.model}")
        print(result.format_text())
    return 0


def _clip(text: str, size: int = 40) -> str:
    return repr(text if len(text) <= size else text[:size] + "...")


def _check_before_loading(
    dataset: str, split: str, skip: int, examples: Sequence[Example], labels: Sequence[str], asked: bool
) -> None:
    """What the extractor would refuse mid-run, refused before the model loads: a label
    list it cannot take (over 64, an empty name), a sentence it cannot (blank, NUL)."""
    from padellm_ner.labels import check_labels
    from padellm_ner.text_rules import check_text

    check_labels(labels, "--labels" if asked else f"the labels of {dataset} (give fewer with --labels)")
    for i, ex in enumerate(examples):
        try:
            check_text(ex.text)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{dataset}/{split} sentence #{skip + i} ({_clip(ex.text)}): {exc}") from None


def _check_labels(asked: Sequence[str] | None, known: Sequence[str], dataset: str) -> None:
    """``--labels`` the dataset never tags score nothing but false positives: none known
    is a mistake (a typo would cost a whole run); some unknown, a warning."""
    if not asked:
        return
    unknown = [label for label in asked if label not in known]
    if len(unknown) == len(asked):
        raise InvalidInputError(
            f"--labels {' '.join(asked)}: {dataset} tags none of them; its labels are {', '.join(known)}"
        )
    if unknown:
        print(f"warning: {dataset} never tags {', '.join(unknown)}: those labels can only score "
              "false positives", file=sys.stderr)


def _as_given(name: str) -> str:
    """A name as is, a folder as its absolute path (``runs/x`` and ``./runs/x`` agree)."""
    from pathlib import Path

    return str(Path(name).resolve()) if Path(name).exists() else name


def _run_merge(args: Namespace) -> int:
    """``evaluate --merge a.json b.json``: the report of the shards together."""
    from pathlib import Path

    parts = []
    for name in args.merge:
        try:
            parts.append(result_from_dict(json.loads(Path(name).read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"--merge {name}: not an `evaluate --json` report ({exc})") from exc
    try:
        result = merge_results(parts)
    except InvalidInputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # NOTE: hand-edited fields
        raise InvalidInputError(f"--merge: a report has a malformed field ({type(exc).__name__}: {exc})") from exc
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(f"{len(parts)} shards, {result.report.num_sentences} sentences")
        print(result.format_text())
    return 0
