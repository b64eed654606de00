"""``padellm-ner extract``: one text, a JSONL file (resumable), in-process or via a server."""

from __future__ import annotations

import json
import logging
import sys
from argparse import Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from padellm_ner.cli_types import fill_unset, flags_given
from padellm_ner.errors import InvalidInputError, PadellmError
from padellm_ner.labels import check_labels
from padellm_ner.text_rules import check_text
from padellm_ner.types import Entity

__all__ = ["run_extract", "render_table", "JsonlJob", "process_jsonl"]

logger = logging.getLogger(__name__)

UNTRAINED_NOTE = (
    "note: model {model} is an UNTRAINED base (no trained adapter is embedded or given "
    "with --model); its entities are not meaningful."
)

DEFAULT_NOTE = (
    "note: the embedded default is a small LoRA adapter trained on CPU on CoNLL-2003 (1.95 "
    "epochs, test F1 82.3, below the paper's; data, commands and scores in {card})."
)

#: texts that ask for the same labels (None: the model's) -> each text's entities, in order
BatchExtractFn = Callable[[list[str], Sequence[str] | None], list[list[Entity]]]


def render_table(text: str, entities: Sequence[Entity]) -> str:
    """A plain table: label, text, offsets, score."""
    lines = [f"text: {text}", f"{'label':<10} {'start':>5} {'end':>5} {'score':>6}  text"]
    for e in entities:
        start = "-" if e.start is None else str(e.start)
        end = "-" if e.end is None else str(e.end)
        lines.append(f"{e.label:<10} {start:>5} {end:>5} {e.score:>6.3f}  {e.text}")
    if not entities:
        lines.append("(no entities)")
    return "\n".join(lines)


def _local_extractor(args: Namespace) -> tuple[BatchExtractFn, bool]:
    from padellm_ner.extraction import Extractor
    from padellm_ner.plan import Dedup, PlanConfig

    config = PlanConfig(max_mentions=args.max_mentions, dedup=Dedup(args.dedup))
    extractor = Extractor.from_pretrained(
        args.model, args.device, args.dtype, args.max_batch_size, plan_config=config,
        count_hedge=getattr(args, "count_hedge", None),
    )

    def extract(texts: list[str], labels: Sequence[str] | None) -> list[list[Entity]]:
        # NOTE: one engine run for all (greedy: each text's result is the same as alone)
        outputs = extractor.extract_batch(texts, labels, [args.lang] * len(texts))
        return [o.entities for o in outputs]

    return extract, extractor.info.trained


def _server_extractor(args: Namespace) -> tuple[BatchExtractFn, Callable[[], None]]:
    import padellm_client

    root = getattr(args, "root_cert", None)
    try:
        client = padellm_client.NERClient(
            args.server, timeout=args.timeout, ssl=root is not None, root_certificates=root,
            private_key=getattr(args, "client_key", None), certificate_chain=getattr(args, "client_cert", None),
            tls_server_name=getattr(args, "tls_server_name", None),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise InvalidInputError(str(exc)) from exc

    def extract(texts: list[str], labels: Sequence[str] | None) -> list[list[Entity]]:
        try:
            found = client.extract_many(
                texts,
                concurrency=len(texts),  # NOTE: in flight together: the server batches them
                labels=list(labels) if labels else None,
                max_mentions=args.max_mentions,
                dedup=args.dedup,
            )
        except padellm_client.InvalidArgumentError as exc:
            raise InvalidInputError(str(exc)) from exc
        except padellm_client.PadellmError as exc:
            raise PadellmError(f"server {args.server}: {exc}") from exc
        return [[Entity(e.label, e.text, e.start, e.end, e.score) for e in one] for one in found]

    return extract, client.close


def _read_done(output: Path) -> int:
    """How many output lines are complete (a torn last line is dropped and redone)."""
    if not output.exists():
        return 0
    raw = output.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        output.write_bytes(raw[:cut])
        raw = raw[:cut]
    return raw.count(b"\n")


@dataclass(frozen=True)
class JsonlJob:
    """An ``--input``/``--output`` job, read and checked before any model loads, so a
    bad file is an error in milliseconds, not after the model's start-up."""

    input_path: Path
    output_path: Path
    lines: list[str]
    done: int  # output lines already complete: a rerun resumes after them

    @classmethod
    def open(cls, input_path: Path, output_path: Path) -> JsonlJob:
        try:
            # NOTE: lines end at "\n" only: JSON strings may hold a raw U+2028 or U+0085
            # (our own output writes them so), which str.splitlines() would cut at.
            lines = input_path.read_text(encoding="utf-8-sig").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read --input {input_path}: {exc}") from exc
        if output_path.resolve() == input_path.resolve():
            raise InvalidInputError(f"--output {output_path} is the --input file; give another path")
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            output_path.open("a", encoding="utf-8").close()  # NOTE: writable, before the model loads
        except OSError as exc:
            raise InvalidInputError(f"cannot write --output {output_path}: {exc.strerror or exc}") from exc
        if lines and not lines[-1].strip():
            lines.pop()  # the file's last newline ends a line, it does not start one
        done = _read_done(output_path) if output_path.resolve().is_file() else 0  # NOTE: a pipe
        if done > len(lines):
            raise InvalidInputError(
                f"{output_path} has {done} lines but {input_path} only {len(lines)}; "
                "is --output from another input?"
            )
        return cls(input_path, output_path, lines, done)


def process_jsonl(
    job: JsonlJob,
    extract: BatchExtractFn,
    default_labels: Sequence[str] | None = None,
    progress: bool = True,
    batch: int = 1,
) -> tuple[int, int]:
    """Extract every line of the job's input into its output; returns (done now, errors).

    Every input line gets exactly one output line, in order: ``{"id", "text", "entities"}``
    or ``{"id", "error"}`` for a line that is not usable. Lines go ``batch`` at a time to
    ``extract`` (decoded together in process, in flight together on a server), each
    batch's lines written when it is done, so a rerun, which skips the lines written,
    redoes at most one batch.
    """
    from tqdm import tqdm

    if batch < 1:
        raise InvalidInputError("batch must be at least 1")
    errors = 0
    todo = list(enumerate(job.lines))[job.done :]
    with job.output_path.open("a", encoding="utf-8") as out, tqdm(
        total=len(todo), desc="extract", unit="line", disable=not progress
    ) as bar:
        for at in range(0, len(todo), batch):
            chunk = todo[at : at + batch]
            for record in _process_chunk(chunk, extract, default_labels):
                errors += "error" in record
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(chunk))
    return len(todo), errors


def _process_chunk(
    chunk: list[tuple[int, str]], extract: BatchExtractFn, default_labels: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The records of some lines, in order: lines that ask for the same labels are one
    ``extract`` call; a call refused as a whole is redone line by line, so the refusal
    lands on the line that caused it."""
    records: list[dict[str, Any] | None] = []
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    parsed: list[tuple[Any, str, list[str] | None]] = []
    for number, line in chunk:
        try:
            record_id, text, labels = _parse_line(number, line, default_labels)
        except InvalidInputError as exc:
            records.append({"id": _line_id(number, line), "error": f"line {number + 1}: {exc}"})
            parsed.append((None, "", None))
            continue
        records.append(None)
        parsed.append((record_id, text, labels))
        groups.setdefault(tuple(labels) if labels is not None else None, []).append(len(records) - 1)

    def done(i: int, entities: list[Entity]) -> None:
        record_id, text, _ = parsed[i]
        records[i] = {"id": record_id, "text": text, "entities": [e.to_dict() for e in entities]}

    for key, members in groups.items():
        labels = list(key) if key is not None else None
        try:
            for i, entities in zip(members, extract([parsed[i][1] for i in members], labels)):
                done(i, entities)
        except InvalidInputError:
            for i in members:  # NOTE: which line was it? each alone
                try:
                    done(i, extract([parsed[i][1]], labels)[0])
                except InvalidInputError as exc:
                    records[i] = {"id": parsed[i][0], "error": f"line {chunk[i][0] + 1}: {exc}"}
    return [r for r in records if r is not None]


def _line_id(number: int, line: str) -> Any:
    """The line's own ``id`` when it has one, else its number (also for a bad line)."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        return number
    return item.get("id", number) if isinstance(item, dict) else number


def _parse_line(
    number: int, line: str, default_labels: Sequence[str] | None
) -> tuple[Any, str, list[str] | None]:
    """``(id, text, labels)`` of one JSONL line, or ``InvalidInputError`` saying why not."""
    try:
        item = json.loads(line) if line.strip() else None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"invalid JSON: {exc}") from None
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise InvalidInputError('each line must be a JSON object with a "text" string')
    labels = item.get("labels")  # NOTE: [] or "" is an error, as --labels "" is; null is the default
    if labels is None:
        labels = default_labels
    if labels is not None and not isinstance(labels, list | tuple):
        # NOTE: a bare string would be read as its letters; check_labels checks the items
        raise InvalidInputError('"labels" must be a list of strings, e.g. ["PER", "LOC"]')
    check_text(item["text"])
    return item.get("id", number), item["text"], check_labels(labels) if labels is not None else None


#: the in-process model options' defaults, as ``_add_model_args`` declares them (extract's
#: parser leaves them unset, so ``--server`` can refuse a given one)
MODEL_DEFAULTS = {"model": "default", "device": "auto", "dtype": "auto", "max_batch_size": 64}


def run_extract(args: Namespace) -> int:
    if (args.text is None) == (args.input is None):
        raise InvalidInputError('give either a TEXT argument or --input FILE.jsonl')
    if args.input and not args.output:
        raise InvalidInputError("--input needs --output (the results file; reruns resume it)")
    if args.text is not None:
        check_text(args.text)
    if args.labels is not None:
        args.labels = check_labels(args.labels, "--labels")
    if args.input and not Path(args.input).is_file():
        what = "is a folder, not a JSONL file" if Path(args.input).is_dir() else "does not exist"
        raise InvalidInputError(f"--input {args.input} {what}")
    job = JsonlJob.open(Path(args.input), Path(args.output)) if args.input else None
    if getattr(args, "root_cert", None) and not args.server:
        raise InvalidInputError("--root-cert goes with --server (TLS to a server)")
    tls_extras = [f"--{name.replace('_', '-')}" for name in ("client_cert", "client_key", "tls_server_name")
                  if getattr(args, name, None)]  # fmt: skip
    if tls_extras and not getattr(args, "root_cert", None):
        raise InvalidInputError(f"{', '.join(tls_extras)} go with --server and --root-cert (TLS)")
    if bool(getattr(args, "client_cert", None)) != bool(getattr(args, "client_key", None)):
        raise InvalidInputError("--client-cert and --client-key go together (mutual TLS)")
    if args.server is not None and not args.server.strip():
        raise InvalidInputError("--server is empty; give host:port (e.g. 127.0.0.1:8001)")
    if getattr(args, "count_hedge", None) is not None and args.server:
        raise InvalidInputError(
            "--count-hedge is the server's setting (padellm-ner serve --count-hedge P), not a request's"
        )
    if getattr(args, "lang", None) is not None and args.server:
        raise InvalidInputError("--lang is the served model's setting (recorded in its padellm.json), not a request's")
    given = flags_given(args, dict.fromkeys(MODEL_DEFAULTS))
    if args.server and given:
        raise InvalidInputError(f"{', '.join(given)}: the server's model decides (padellm-ner serve {given[0]} ...), not a request")
    fill_unset(args, MODEL_DEFAULTS)
    if args.server:
        extract, close = _server_extractor(args)
    else:
        extract, trained = _local_extractor(args)
        close = lambda: None  # noqa: E731
        if not trained:
            # NOTE: it used to name SmolLM2-135M whatever --model was (gemma3-270m too)
            print(UNTRAINED_NOTE.format(model=args.model), file=sys.stderr)
        elif args.model == "default":
            from padellm_ner.models import default_model_dir

            card = Path(default_model_dir()[0]) / "MODEL_CARD.md"
            print(DEFAULT_NOTE.format(card=card), file=sys.stderr)
    try:
        if job is not None:
            count, errors = process_jsonl(job, extract, args.labels, batch=args.batch_sentences)
            print(f"wrote {count} lines to {args.output} ({errors} with errors)", file=sys.stderr)
            return 1 if errors else 0
        entities = extract([args.text], args.labels)[0]
        if args.json:
            print(json.dumps([e.to_dict() for e in entities], ensure_ascii=False))
        else:
            print(render_table(args.text, entities))
        return 0
    finally:
        close()
