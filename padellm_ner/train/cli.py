"""``padellm-ner train``: datasets -> rendered pairs -> token ids -> ``Trainer`` -> saved model.

Every output format goes through the same path (``get_format(name).render`` then train),
so the baselines share PaDeLLM's recipe. The saved folder holds ``padellm.json`` with the
format, prompt label words, tags, language, datasets and base, which serving reads.

``python -m padellm_ner.train.cli`` accepts the same options plus a few extra ones
(``--zero-count-keep``, ``--micro-tokens``, ``--max-len``, ``--max-minutes``, ``--stop-at-step``,
``--fit-schedule``, ``--log-every``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from padellm_ner.cli_types import float_above, int_at_least, positive_fraction
from padellm_ner.errors import InvalidInputError, PadellmError
from padellm_ner.labels import check_labels
from padellm_ner.model_info import META_FILE
from padellm_ner.models import BASE_MODELS
from padellm_ner.types import Example

__all__ = [
    "DatasetSpec",
    "add_extra_args",
    "encode_units",
    "export_model",
    "model_card",
    "load_datasets",
    "main",
    "render_groups",
    "run_train",
]

logger = logging.getLogger(__name__)

#: the machine of a model card unless told otherwise (where the CPU stages ran)
CPU_MACHINE = "2-core CPU (AMD EPYC, AVX2), no GPU"


@dataclass(frozen=True)
class DatasetSpec:
    """One training dataset with the tags and prompt words used for it."""

    name: str
    lang: str
    tags: tuple[str, ...]
    label_words: dict[str, str]


def add_extra_args(p: argparse.ArgumentParser) -> None:
    """Options beyond the ones ``padellm_ner.cli`` declares (defaults keep its behaviour)."""
    p.add_argument(
        "--zero-count-keep",
        type=positive_fraction,
        default=1.0,
        help="fraction of zero-count PaDeLLM sequences kept (1.0 = all, as in the paper)",
    )
    p.add_argument("--micro-tokens", type=int_at_least(1), default=1024, help="padded tokens per forward pass")
    p.add_argument("--max-len", type=int_at_least(1), default=512, help="drop longer sequences")
    p.add_argument(
        "--max-minutes", type=float_above(0), default=None, help="stop and save after this wall time"
    )
    p.add_argument(
        "--stop-at-step", type=int_at_least(1), default=None,
        help="stop and save after this step, keeping the planned LR schedule "
        "(reproduces a run --max-minutes cut short; --max-steps shortens the schedule)",
    )
    p.add_argument(
        "--fit-schedule", action="store_true",
        help="with --max-minutes: shorten the LR schedule, from the measured step time, so "
        "it decays to 0 inside the limit instead of being cut mid-schedule",
    )
    p.add_argument("--log-every", type=int_at_least(1), default=10, help="log a JSON line every N steps")
    p.add_argument("--keep-checkpoints", type=int_at_least(1), default=2, help="newest checkpoints kept")
    p.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="merge each sentence's sequences into one prefix tree (same loss, fewer tokens)",
    )
    p.add_argument("--row-tokens", type=int_at_least(1), default=256, help="packing row length")
    p.add_argument(
        "--init-adapter",
        default=None,
        help="LoRA adapter folder to continue training (warm start; new schedule and data)",
    )
    p.add_argument(
        "--skip", type=int_at_least(0), default=0, help="skip the first N training sentences of each dataset"
    )


#: what a finished (or checkpointed) run leaves in --out
_TRAINED_FILES = ("adapter_model.safetensors", "model.safetensors", "checkpoints")


#: what a run writes into --out (besides tokenizer files, which a save rewrites)
_RUN_FILES = (*_TRAINED_FILES, "adapter_config.json", "config.json", "generation_config.json",
              META_FILE, "train_log.jsonl", "train_result.json", "training_curve.png")  # fmt: skip


def _clear_run(out: Path) -> None:
    """``--overwrite``: remove the earlier run's files, or its checkpoints would outlive it
    (a later ``--resume`` loaded the old run's weights) and its log would continue."""
    for name in _RUN_FILES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _adopt_adapter_shape(args: argparse.Namespace, init: Path) -> None:
    """A warm start continues the adapter as it is: its base must be ``--base`` (peft
    failed on a tensor size otherwise) and its rank and alpha are the run's (they were
    recorded from --lora-r/--lora-alpha, which the adapter ignores)."""
    from padellm_ner.models import adapter_base, same_model

    cfg = json.loads((init / "adapter_config.json").read_text())
    base = adapter_base(init)
    if not same_model(base, args.base):
        raise InvalidInputError(f"--init-adapter {init} was trained on {base}, not on --base {args.base}")
    r, alpha = int(cfg.get("r", args.lora_r)), int(cfg.get("lora_alpha", args.lora_alpha))
    if (r, alpha) != (args.lora_r, args.lora_alpha):
        print(f"train: LoRA r={r}, alpha={alpha} from --init-adapter {init}", file=sys.stderr)
    args.lora_r, args.lora_alpha = r, alpha


def _check_paths(args: argparse.Namespace) -> None:
    """``--out`` and ``--init-adapter`` checked before data or model load (each used to
    fail with a traceback: FileExistsError, peft's ValueError)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the trained model")
    trained = [name for name in _TRAINED_FILES if (out / name).exists()]
    if trained and not (args.resume or getattr(args, "overwrite", False)):
        # NOTE: as HF's example scripts refuse a non-empty output_dir: a rerun must not
        # silently replace hours of training
        raise InvalidInputError(
            f"--out {out} already holds a trained model ({', '.join(trained)}); pass --resume "
            "to continue it, --overwrite to replace it, or another --out"
        )
    init = getattr(args, "init_adapter", None)
    if init is not None:
        if not args.lora:
            raise InvalidInputError("--init-adapter continues a LoRA adapter; it does not go with --no-lora")
        if not (Path(init) / "adapter_config.json").is_file():
            raise InvalidInputError(f"--init-adapter {init} is not a LoRA adapter folder (no adapter_config.json)")
        _adopt_adapter_shape(args, Path(init))


def _read_labels_file(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # NOTE: a BOM, as in datasets
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--labels-file {path}: {exc}") from exc
    if isinstance(data, list):
        data = {str(tag): str(tag) for tag in data}
    if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
        raise InvalidInputError(
            f"--labels-file {path}: expected a JSON object {{tag: label words}}"
        )
    tags = [str(k) for k in data]
    # NOTE: a word goes into the prompt as a label does: one line, as check_labels says;
    # two tags with one word would be asked about once and merged at inference
    words = check_labels(list(data.values()), f"--labels-file {path}: label word")
    seen: dict[str, str] = {}
    for tag, word in zip(tags, words):
        if word in seen:
            raise InvalidInputError(
                f"--labels-file {path}: {seen[word]} and {tag} have the same label words {word!r}; "
                "each tag needs its own"
            )
        seen[word] = tag
    return dict(zip(tags, words))


def load_datasets(names: str, labels_file: str | None = None) -> list[DatasetSpec]:
    """Specs of comma-separated dataset names or folders.

    A labels file (``{tag: words}``) overrides the prompt words of the tags it names and
    restricts training to those tags.
    """
    from padellm_ner.data import dataset_info

    override = _read_labels_file(labels_file) if labels_file else None
    specs = []
    known: set[str] = set()
    listed = [n.strip() for n in names.split(",") if n.strip()]
    if repeated := sorted({n for n in listed if listed.count(n) > 1}):
        # NOTE: a repeated name trained every sentence of it twice
        raise InvalidInputError(f"--dataset names {', '.join(repeated)} more than once")
    for name in listed:
        info = dataset_info(name).require_labels(name)
        tags = list(info.labels)
        words = {tag: info.word(tag) for tag in tags}
        if override is not None:
            tags = [tag for tag in tags if tag in override]
            words = {tag: override[tag] for tag in tags}
            if not tags:
                raise InvalidInputError(
                    f"--labels-file names none of the tags of {name}: {info.labels}"
                )
        specs.append(DatasetSpec(name=name, lang=info.lang, tags=tuple(tags), label_words=words))
        known.update(info.labels)
    if not specs:
        raise InvalidInputError("--dataset names no dataset")
    if override is not None and (unknown := sorted(set(override) - known)):
        # NOTE: a typo ("LCO") silently trained without that tag
        raise InvalidInputError(
            f"--labels-file names tags no --dataset has: {', '.join(unknown)} (they have {', '.join(sorted(known))})"
        )
    if len({s.lang for s in specs}) > 1:
        # NOTE: one model, one prompt language: a mixed run recorded the first dataset's
        # language and one word per tag, and decoded the other language with them
        raise InvalidInputError(
            "--dataset mixes languages ("
            + ", ".join(f"{s.name}: {s.lang}" for s in specs)
            + "); train one model per language"
        )
    _check_words_across(specs)
    return specs


def _check_words_across(specs: Sequence[DatasetSpec]) -> None:
    """One model records one word per tag and one tag per word: two datasets that disagree
    (weibo PER.NAM and resume NAME are both 人名; LOC is 地址 in resume, 地点 in msra) trained
    prompts inference cannot tell apart, or words it never asks. A labels file settles it."""
    word_of: dict[str, tuple[str, str]] = {}
    tag_of: dict[str, tuple[str, str]] = {}
    for spec in specs:
        for tag in spec.tags:
            word = spec.label_words[tag]
            if tag in word_of and word_of[tag][0] != word:
                raise InvalidInputError(
                    f"tag {tag} is {word_of[tag][0]!r} in {word_of[tag][1]} but {word!r} in "
                    f"{spec.name}; give one word per tag with --labels-file"
                )
            if word in tag_of and tag_of[word][0] != tag:
                raise InvalidInputError(
                    f"{tag_of[word][0]} ({tag_of[word][1]}) and {tag} ({spec.name}) have the same "
                    f"label words {word!r}; give each tag its own with --labels-file"
                )
            word_of[tag], tag_of[word] = (word, spec.name), (tag, spec.name)


def render_groups(
    examples: Sequence[Example],
    spec: DatasetSpec,
    fmt_name: str,
    zero_count_keep: float = 1.0,
    seed: int = 0,
) -> list[list[Any]]:
    """Training pairs of each example in format ``fmt_name`` (zero-count pairs subsampled)."""
    from padellm_ner.prompts import get_format
    from padellm_ner.train.dataset import keep_zero_count

    fmt = get_format(fmt_name, spec.lang, label_words=spec.label_words)
    groups = []
    for example in examples:
        pairs = fmt.render(_only_tags(example, spec.tags), spec.tags)
        if fmt_name == "padellm" and zero_count_keep < 1.0:
            pairs = [p for p in pairs if keep_zero_count(p, zero_count_keep, seed)]
        if pairs:
            groups.append(pairs)
    return groups


def encode_units(
    groups: Sequence[Sequence[Any]], codec: Any, max_len: int | None, pack: bool
) -> list[Any]:
    """Token units: one trie per example (``pack``: shared prefixes once) or one per pair."""
    from padellm_ner.train.dataset import encode_pairs, pack_unit

    units = []
    for group in groups:
        seqs = encode_pairs(group, codec, max_len)
        if pack and seqs:
            units.append(pack_unit(seqs))
        else:
            units.extend(pack_unit([s]) for s in seqs)
    return units


def _only_tags(example: Example, tags: Sequence[str]) -> Example:
    """The example without entities of tags left out of training (labels-file restriction)."""
    keep = set(tags)
    if all(e.label in keep for e in example.entities):
        return example
    return Example(
        example.text, [e for e in example.entities if e.label in keep], example.lang, example.id
    )


def _union(items: Sequence[Sequence[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in items:
        for item in group:
            seen.setdefault(item, None)
    return list(seen)


def _eval_end(
    trainer: Any, args: argparse.Namespace, specs: list[DatasetSpec], codec: Any, out: Path
) -> dict[str, Any]:
    """Dev loss on ``--eval-limit`` dev sentences, plus F1 when ``padellm_ner.evaluate`` has it."""
    from padellm_ner.data import available_splits, load_split

    result: dict[str, Any] = {}
    limit = int(args.eval_limit or 0)
    if limit <= 0:
        return result
    for spec in specs:
        if "dev" not in available_splits(spec.name):
            continue
        dev = load_split(spec.name, "dev")[:limit]
        groups = render_groups(dev, spec, args.format)
        seqs = encode_units(groups, codec, getattr(args, "max_len", None), pack=True)
        entry: dict[str, Any] = {
            "sentences": len(dev),
            "dev_loss": round(trainer.eval_loss(seqs), 5),
        }
        try:
            from padellm_ner.evaluate import evaluate_model
            from padellm_ner.extraction import Extractor
        except ImportError:  # NOTE: F1 needs the inference stack; dev loss alone otherwise
            evaluate_model = None
        if evaluate_model is not None:
            try:
                extractor = Extractor.from_pretrained(
                    str(out), device=trainer.device, dtype="float32", method=args.format
                )
                report = evaluate_model(
                    extractor, dev, list(spec.tags), progress=False, batch_sentences=8
                )
                entry["f1"] = report.to_dict()
                del extractor
            except Exception as exc:  # noqa: BLE001 - eval must not lose a finished run
                logger.warning("dev F1 evaluation failed: %s", exc)
                entry["f1_error"] = str(exc)
        result[spec.name] = entry
    return result


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``padellm-ner train`` (see ``padellm_ner.cli`` for the options)."""
    from padellm_ner.codec import PromptCodec
    from padellm_ner.data import load_split
    from padellm_ner.train.dataset import is_zero_count
    from padellm_ner.train.trainer import TrainConfig, Trainer

    t_start = time.perf_counter()
    zero_keep = float(getattr(args, "zero_count_keep", 1.0))  # bounds: positive_fraction
    _check_paths(args)
    specs = load_datasets(args.dataset, args.labels_file)
    langs = {s.lang for s in specs}

    groups: list[list[Any]] = []
    num_sentences: dict[str, int] = {}
    num_available: dict[str, int] = {}
    for spec in specs:
        examples = load_split(spec.name, "train")
        num_available[spec.name] = len(examples)
        skip = int(getattr(args, "skip", 0) or 0)
        if skip:
            examples = examples[skip:]
        if args.limit is not None:
            examples = examples[: args.limit]  # NOTE: per dataset: the first N sentences of each
        num_sentences[spec.name] = len(examples)
        groups.extend(render_groups(examples, spec, args.format, zero_keep, args.seed))
    pairs = [p for g in groups for p in g]
    if not pairs:
        have = ", ".join(f"{name} {n}" for name, n in num_available.items())
        skip = int(getattr(args, "skip", 0) or 0)
        raise InvalidInputError(
            f"no training sentences left after --skip {skip} (train sentences: {have})"
            if skip
            else f"no training sequences from the train split ({have} sentences)"
        )
    num_zero = sum(is_zero_count(p) for p in pairs) if args.format == "padellm" else 0

    config = TrainConfig(
        out=args.out,
        base=args.base,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        init_adapter=getattr(args, "init_adapter", None),
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_tokens=args.batch_tokens,
        micro_tokens=int(getattr(args, "micro_tokens", 1024)),
        lr=args.lr,
        warmup=args.warmup,
        seed=args.seed,
        save_every=args.save_every,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        log_every=int(getattr(args, "log_every", 10)),
        max_minutes=getattr(args, "max_minutes", None),
        stop_at_step=getattr(args, "stop_at_step", None),
        fit_schedule=bool(getattr(args, "fit_schedule", False)),
        keep_checkpoints=int(getattr(args, "keep_checkpoints", 2)),
        row_tokens=int(getattr(args, "row_tokens", 256)) or None,
        progress=True,
        recipe={
            "format": args.format,
            "datasets": {s.name: dict(s.label_words) for s in specs},
            "skip": int(getattr(args, "skip", 0) or 0),
            "limit": args.limit,
            "zero_count_keep": zero_keep,
        },
    )
    if getattr(args, "overwrite", False):
        _clear_run(Path(args.out))  # NOTE: only now, once the data and options are known good
    trainer = Trainer(config)
    codec = PromptCodec(trainer.tokenizer, trainer.end_id)
    pack = bool(getattr(args, "pack", True))
    seqs = encode_units(groups, codec, getattr(args, "max_len", 512), pack)
    if not seqs:
        raise InvalidInputError(
            f"every training sequence is longer than --max-len {getattr(args, 'max_len', 512)} tokens"
        )
    print(
        f"train: {sum(num_sentences.values())} sentences -> {len(pairs)} pairs "
        f"({num_zero} zero-count), {sum(u.num_raw_tokens for u in seqs)} tokens "
        f"({sum(len(u) for u in seqs)} packed); base {args.base}, "
        f"{f'LoRA r={args.lora_r}' if args.lora else 'full fine-tune'}, device {trainer.device}",
        file=sys.stderr,
        flush=True,
    )
    out = Path(args.out)
    tags = _union([s.tags for s in specs])
    words = {t: w for s in reversed(specs) for t, w in s.label_words.items()}
    meta: dict[str, Any] = {
        "format": args.format,
        # NOTE: "labels"[i] is the prompt word of "tags"[i] (readers zip the two lists).
        "labels": [words[t] for t in tags],
        "tags": tags,
        "label_words": words,
        "lang": specs[0].lang,
        "langs": sorted(langs),
        "dataset": ",".join(s.name for s in specs),
        "base": args.base,
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "target": "all-linear"}
        if args.lora
        else None,
        "train": {
            "sentences": num_sentences,
            "sentences_available": num_available,
            "pairs": len(pairs),
            "zero_count_pairs": num_zero,
            "zero_count_keep": zero_keep,
            "tokens": sum(u.num_raw_tokens for u in seqs),
            "packed_tokens": sum(len(u) for u in seqs),
            "packed": pack,
            "seed": args.seed,
            "skip": int(getattr(args, "skip", 0) or 0),
            "init_adapter": getattr(args, "init_adapter", None),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    # NOTE: written before training too, so a checkpoint folder is usable if the run dies.
    (out / META_FILE).write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    result = trainer.train(seqs)
    meta["train"].update(
        steps=result.steps,
        total_steps=result.total_steps,
        planned_steps=result.planned_steps,
        epochs_done=result.epochs_done,
        final_loss=round(result.final_loss, 5),
        tokens_per_s=round(result.tokens_per_s, 1),
        raw_tokens_per_s=round(result.raw_tokens_per_s, 1),
        train_wall_s=round(result.train_wall_s, 1),
        lr=args.lr,
        batch_tokens=args.batch_tokens,
        warmup=args.warmup,
        device=trainer.device,
        threads=args.threads,
    )
    (out / META_FILE).write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    evals = _eval_end(trainer, args, specs, codec, out)
    if evals:
        meta["eval"] = evals
        (out / META_FILE).write_text(
            json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    print(
        f"train: done, {result.steps}/{result.total_steps} steps{_fitted_note(meta['train'])}, loss {result.first_loss:.4f} -> "
        f"{result.final_loss:.4f}, {result.tokens_per_s:.0f} tok/s ({result.raw_tokens_per_s:.0f} unpacked), "
        f"{time.perf_counter() - t_start:.0f}s; saved to {out}"
        + (f"; eval {json.dumps(evals)}" if evals else ""),
        file=sys.stderr,
        flush=True,
    )
    return 0


#: the tokenizer's files: an adapter leaves them out when they are the base's own
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

#: what a servable trained folder needs (checkpoints, logs and the PEFT README stay behind)
EXPORT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    META_FILE,
)


def export_model(
    src: str | Path, dst: str | Path, adapter_dtype: str | None = "float16"
) -> list[Path]:
    """Copy the servable files of a trained folder (e.g. into ``padellm_ner/assets``).

    Args:
        src: the ``--out`` folder of a run.
        dst: where the servable copy goes.
        adapter_dtype: store LoRA weights in this dtype (``None``: as trained, fp32);
            fp16 halves the committed file, and loading casts back to the model's dtype.

    Returns:
        The copied paths. An adapter whose tokenizer files are byte-for-byte the base's
        leaves them out (loading falls back to the base's tokenizer), so a committed
        adapter does not carry a second copy of the vocabulary.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    if not (src / "adapter_config.json").exists() and not (src / "config.json").exists():
        raise InvalidInputError(f"{src} holds no trained model (run train first)")
    dst.mkdir(parents=True, exist_ok=True)
    skip = set(TOKENIZER_FILES) if _same_tokenizer_as_base(src) else set()
    copied = []
    for name in EXPORT_FILES:
        if name in skip:
            (dst / name).unlink(missing_ok=True)  # NOTE: a stale copy from an older export
        elif (src / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(dst / name)
    adapter = dst / "adapter_model.safetensors"
    if adapter_dtype and adapter.exists():
        import torch
        from safetensors.torch import load_file, save_file

        dtype = getattr(torch, adapter_dtype)
        weights = {
            k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(adapter).items()
        }
        save_file(weights, adapter, metadata={"format": "pt"})
        adapter.chmod(0o644)  # NOTE: save_file writes 0600; the asset is meant to be read by all
    return copied


def _same_tokenizer_as_base(src: Path) -> bool:
    """True when ``src`` is an adapter whose tokenizer files equal its base model's."""
    from padellm_ner.models import adapter_base, resolve_model_dir

    if not (src / "adapter_config.json").exists():
        return False
    try:
        base_dir = resolve_model_dir(adapter_base(src) or "")
    except PadellmError:
        return False
    present = [n for n in TOKENIZER_FILES if (src / n).exists() or (base_dir / n).exists()]
    return bool(present) and all(
        (src / n).is_file() and (base_dir / n).is_file()
        and (src / n).read_bytes() == (base_dir / n).read_bytes()
        for n in present
    )


def _stages(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's training stages, oldest first (a warm start records its ``init_adapter``)."""
    from padellm_ner.train.curve import stage_dirs

    init = meta.get("train", {}).get("init_adapter")
    if not init or not (Path(init) / META_FILE).is_file():
        return [meta]
    earlier = [json.loads((d / META_FILE).read_text(encoding="utf-8")) for d in stage_dirs(init)]
    return [*earlier, meta]


def _fitted_note(train: dict[str, Any]) -> str:
    """How a ``--fit-schedule`` run's schedule differs from the one its epochs planned."""
    planned, total = int(train.get("planned_steps") or 0), int(train.get("total_steps") or 0)
    if planned <= total:
        return ""
    return f"; --fit-schedule shortened the {planned} planned steps to fit --max-minutes"


def _coverage(stages: Sequence[dict[str, Any]]) -> tuple[int, float]:
    """Distinct train sentences the stages covered, and sentence passes in all (repeats count)."""
    spans: list[tuple[int, int]] = []
    passes = 0.0
    for st in stages:
        tr = st.get("train", {})
        n = sum(tr.get("sentences", {}).values())
        done = float(tr.get("epochs_done") or 1.0)
        passes += n * done
        skip = int(tr.get("skip") or 0)
        spans.append((skip, skip + round(n * min(1.0, done))))
    seen, reach = 0, 0
    for start, end in sorted(spans):
        start = max(start, reach)
        if end > start:
            seen += end - start
        reach = max(reach, end)
    return seen, passes


#: PaDeLLM's micro-F1 in the paper (7B models; docs/METHOD.md), per dataset trained here
PAPER_F1 = {
    "conll2003": 92.52, "genia": 77.66, "weibo": 67.36, "msra": 95.03, "resume": 94.98,
    "youku": 87.91, "ecommerce": 81.85,
}  # fmt: skip


def _size_limit(meta: dict[str, Any], base: str, share: float, epochs: float, machine: str) -> str:
    """The model card's first limit: how small the run was, against the paper's result."""
    dataset = str(meta.get("dataset"))
    paper = PAPER_F1.get(dataset)
    cpu = "no GPU" in machine
    fmt, how = meta.get("format", "padellm"), "with LoRA" if meta.get("lora") else "in full"
    line = (
        f"- A small model ({base}) trained {how} on {100 * share:.0f}% of the data "
        f"({epochs:.2f} epochs) on {'a CPU' if cpu else machine}"
        + (f": below the paper's 7B result ({dataset} F1 {paper:.2f})" if paper else "")
    )
    if dataset == "conll2003":
        line += (
            " and below the project's target (F1 >= 90); it is a working default, not a "
            "benchmark. Retrain on a GPU with the full data for real use (`padellm-ner train "
            f"--format {fmt} --dataset conll2003 --epochs 4`)."
            if cpu
            else "; compare the test scores above with the project's target (F1 >= 90)."
        )
    else:
        line += "." if not cpu else (
            f"; retrain on a GPU for real use (`padellm-ner train --format {fmt} "
            f"--dataset {dataset} --base {base} --epochs 4`)."
        )
    return line


def model_card(
    meta: dict[str, Any],
    command: str | Sequence[str],
    test_report: str | None = None,
    machine: str = CPU_MACHINE,
    curve: str | None = None,
) -> str:
    """A MODEL_CARD.md for a trained folder, from its ``padellm.json`` (train + eval filled in).

    ``command``: the training command, or one per stage when the run warm-started from an
    earlier adapter (``--init-adapter``; the stages are read from the adapters' records).
    """
    commands = [command] if isinstance(command, str) else list(command)
    stages = _stages(meta)
    avail = sum(meta.get("train", {}).get("sentences_available", {}).values()) or 1
    seen, passes = _coverage(stages)
    base = str(meta.get("base"))
    known = BASE_MODELS.get(base)
    end_token = known.end_token if known else "end token"
    lora = meta.get("lora") or {}
    fmt = meta.get("format", "padellm")
    train = meta.get("train", {})
    keep = float(train.get("zero_count_keep", 1.0) or 1.0)
    what = "adapter" if lora else "model"
    zero = (
        "all (no downsampling, as in the paper)" if keep >= 1.0
        else f"{100 * keep:g}% (`--zero-count-keep {keep:g}`; the paper keeps all)"
    )  # fmt: skip
    packing = (
        "each sentence's sequences merged into one prefix tree (same loss as unpacked "
        "training, checked by tests/test_train.py)" if train.get("packed", True)
        else "off (`--no-pack`: one sequence per row)"
    )  # fmt: skip
    targets = (
        f"count, `\\n<mention k>` marker, mention, `{end_token}`" if fmt == "padellm"
        else f"the {fmt} answer text, `{end_token}`"
    )
    tuning = (
        f"- LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout 0.05, on every linear "
        "projection (q/k/v/o, gate/up/down); lm_head and embeddings frozen."
        if lora else "- Full fine-tune: every weight trained."
    )
    lines = [
        f"# {fmt} NER {what} on {base}",
        "",
        f"A {'LoRA adapter for' if lora else 'full fine-tune of'} `{base}`{f' ({known.title})' if known else ''} trained in the "
        f"`{meta.get('format')}` format (docs/METHOD.md) on `{meta.get('dataset')}`. "
        f"Labels (prompt words): {', '.join(meta.get('labels', []))}. Language: {meta.get('lang')}.",
        "",
        "## Data",
        "",
        f"- Training sentences seen: {seen} of {avail} in the train split "
        f"({100 * seen / avail:.1f}%); {passes:.0f} sentence passes in all "
        f"({passes / avail:.2f} epochs)"
        + (f", over {len(stages)} stages (below)." if len(stages) > 1 else "."),
        *([f"- Zero-count sequences kept: {zero}."] if fmt == "padellm" else []),
        f"- Packing: {packing}.",
        "",
        "## Training",
        "",
        tuning,
        f"- Loss on target tokens only ({targets}); "
        "AdamW, warmup then cosine decay to 0, grad clip 1.0, "
        + ("bf16 autocast." if str(train.get("device", "")).startswith("cuda") else "fp32."),
        f"- Machine: {machine}.",
        "",
    ]
    if curve:
        lines += [f"![training curve: loss per stage and dev F1]({curve})", ""]
    for i, st in enumerate(stages):
        tr = st.get("train", {})
        skip = int(tr.get("skip") or 0)
        n = sum(tr.get("sentences", {}).values())
        title = f"### Stage {i + 1}" + (" (warm start from stage " + str(i) + ")" if i else "")
        cmd = commands[i] if i < len(commands) else "(command not recorded)"
        lines += [
            title, "", "```", cmd, "```", "",
            f"- Sentences {skip}..{skip + n} of the train split; {tr.get('pairs')} sequences "
            f"({tr.get('zero_count_pairs')} zero-count), {tr.get('tokens')} tokens "
            f"({tr.get('packed_tokens')} computed after packing).",
            f"- lr {tr.get('lr')}, warmup {tr.get('warmup')}, {tr.get('batch_tokens')} padded tokens "
            f"per step, {tr.get('steps')}/{tr.get('total_steps')} steps "
            f"({float(tr.get('epochs_done') or 0):.2f} epoch)"
            + _fitted_note(tr)
            + f", seed {tr.get('seed')}.",
            f"- Wall time {float(tr.get('train_wall_s') or 0) / 60:.1f} min on {tr.get('device', '?')}"
            + (f" with {tr['threads']} torch thread(s)" if tr.get("threads") else "")
            + f"; {tr.get('tokens_per_s')} "
            f"computed tokens/s = {tr.get('raw_tokens_per_s')} sequence tokens/s; final train loss "
            f"(mean of the last 10 steps) {tr.get('final_loss')}.",
        ]
        for name, ev in (st.get("eval") or {}).items():
            f1 = (ev.get("f1") or {}).get("f1")  # NOTE: already in percent
            lines.append(
                f"- {name} dev, first {ev.get('sentences')} sentences: target-token loss {ev.get('dev_loss')}"
                + (f", micro-F1 {f1:.2f}" if f1 is not None else ", F1 not measured")
                + (f", per-label count right {100 * ev['f1']['count_accuracy']:.0f}%"
                   if (ev.get("f1") or {}).get("count_accuracy") is not None else "")
                + "."
            )
        lines.append("")
    lines += ["## Evaluation", ""]
    if test_report:
        lines += ["Test split (`padellm-ner evaluate`):", "", "```", test_report.strip(), "```"]
    else:
        lines.append("- Test F1: not measured.")
    lines += [
        "",
        "## Limits",
        "",
        _size_limit(meta, base, seen / avail, passes / avail, machine),
        *(["- Adapter weights are stored in float16 (cast back to the model dtype when loaded)."] if lora else []),
        "",
    ]
    return "\n".join(lines)


def _export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m padellm_ner.train.cli export")
    p.add_argument("run", help="the --out folder of a finished run")
    p.add_argument("dst", help="destination folder (e.g. padellm_ner/assets/default-adapter)")
    p.add_argument(
        "--command",
        required=True,
        action="append",
        help="the training command, for the model card (repeat: one per warm-start stage)",
    )
    p.add_argument("--test-report", help="a file holding the test evaluation output")
    p.add_argument("--machine", default=CPU_MACHINE,
                   help="where it was trained, for the model card")
    args = p.parse_args(argv)
    from padellm_ner.train.curve import plot_training_curve

    export_model(args.run, args.dst)
    meta = json.loads((Path(args.run) / META_FILE).read_text(encoding="utf-8"))
    report = Path(args.test_report).read_text(encoding="utf-8") if args.test_report else None
    curve = plot_training_curve(args.run, Path(args.dst) / "training_curve.png")
    card = model_card(meta, args.command, report, args.machine, curve=curve.name if curve else None)
    (Path(args.dst) / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(f"exported {args.run} -> {args.dst}")
    return 0


def _train_parser() -> argparse.ArgumentParser:
    from padellm_ner.cli import build_parser

    # NOTE: the main parser's train subcommand already carries add_extra_args.
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m padellm_ner.train.cli [train] OPTIONS``: the train command with extra options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return _export_main(argv[1:])
    if "train" not in argv:
        flags = [a for a in argv if a in ("-v", "--verbose")]
        argv = [*flags, "train", *[a for a in argv if a not in flags]]
    args = _train_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_train(args)


if __name__ == "__main__":
    sys.exit(main())
