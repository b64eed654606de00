"""``padellm-ner evaluate``: the paper's micro-F1, span F1, and decode cost on a split."""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from padellm_ner.errors import InvalidInputError
from padellm_ner.extraction import Extractor
from padellm_ner.metrics import F1Report, evaluate_predictions
from padellm_ner.types import Entity, Example

__all__ = ["EvalResult", "evaluate_model", "run_evaluate"]


@dataclass
class EvalResult:
    """Scores plus the decoding cost the paper reports next to them."""

    report: F1Report
    mean_critical_path_steps: float
    mean_critical_path_steps_batch: float
    mean_tokens_per_sequence: float
    mean_sequences_per_sentence: float
    count_accuracy: float | None  # PaDeLLM: share of (sentence, label) counts that are right

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out.update(
            mean_critical_path_steps=self.mean_critical_path_steps,
            mean_critical_path_steps_batch=self.mean_critical_path_steps_batch,
            mean_tokens_per_sequence=self.mean_tokens_per_sequence,
            mean_sequences_per_sentence=self.mean_sequences_per_sentence,
            count_accuracy=self.count_accuracy,
        )
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
            lines.append(f"per-label count right: {100 * self.count_accuracy:.2f}%")
        return "\n".join(lines)


def evaluate_model(
    extractor: Extractor,
    examples: Sequence[Example],
    labels: Sequence[str],
    progress: bool = True,
) -> EvalResult:
    """Run ``extractor`` over ``examples`` asking for ``labels`` (tags) and score it."""
    from tqdm import tqdm

    wanted = set(labels)
    gold: list[list[Entity]] = []
    pred: list[list[Entity]] = []
    steps = steps_batch = tokens = sequences = 0
    counts_right = counts_total = 0
    for ex in tqdm(examples, desc="evaluate", unit="sent", disable=not progress):
        out = extractor.extract(ex.text, labels, lang=ex.lang)
        gold.append([e for e in ex.entities if e.label in wanted])
        pred.append(out.entities)
        steps += out.critical_path_steps
        steps_batch += out.critical_path_steps_batch
        tokens += out.num_generated_tokens
        sequences += out.num_sequences
        if out.counts is not None:
            for label in labels:
                counts_total += 1
                counts_right += out.counts.get(label, 0) == len(ex.mentions_of(label))
    n = max(1, len(examples))
    return EvalResult(
        report=evaluate_predictions(gold, pred),
        mean_critical_path_steps=steps / n,
        mean_critical_path_steps_batch=steps_batch / n,
        mean_tokens_per_sequence=tokens / max(1, sequences),
        mean_sequences_per_sentence=sequences / n,
        count_accuracy=counts_right / counts_total if counts_total else None,
    )


def run_evaluate(args: Namespace) -> int:
    from padellm_ner.data import dataset_info, load_split
    from padellm_ner.plan import Dedup, PlanConfig

    info = dataset_info(args.dataset)
    examples = load_split(args.dataset, args.split)
    skip = int(getattr(args, "skip", 0) or 0)
    if skip < 0:
        raise InvalidInputError("--skip must be >= 0")
    examples = examples[skip:]
    if args.limit is not None:
        examples = examples[: args.limit]
    extractor = Extractor.from_pretrained(
        args.model,
        args.device,
        args.dtype,
        args.max_batch_size,
        method=args.format,
        plan_config=PlanConfig(dedup=Dedup(args.dedup)),
    )
    # NOTE: the model's own label words win; the dataset's fill in the rest.
    extractor.info.label_words = {**info.label_words, **extractor.info.label_words}
    labels = args.labels or info.labels
    result = evaluate_model(extractor, examples, labels, progress=not args.json)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        where = f" from #{skip}" if skip else ""
        print(f"{args.dataset}/{args.split}: {len(examples)} sentences{where}, model {args.model}")
        print(result.format_text())
    return 0
