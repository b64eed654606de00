"""``padellm-ner bench campaign``: train, score and time all four methods in one command.

The paper's tables need the same recipe for PaDeLLM and its three baselines, then the
full test set for F1 and a latency run for speed. On a lent GPU this must fit a short
lease, so the campaign is a list of ``padellm-ner`` jobs run in priority order under one
wall-clock budget, each in its own process (a crash or a CUDA out-of-memory error costs
that job, not the run), each skipped when its output already exists (rerun the same
command to continue after a cut), with a summary rewritten after every job so that a
run stopped from outside still leaves its results.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from padellm_ner.errors import InvalidInputError

__all__ = ["TRAIN_SHARE", "Recipe", "Job", "JobRecord", "plan_jobs", "run_campaign", "run_campaign_cli"]

logger = logging.getLogger(__name__)

METHOD_NAMES = {
    "padellm": "PaDeLLM",
    "ar_struct": "AutoReg_Struct",
    "ar_aug": "AutoReg_Aug",
    "onestep": "OneStep",
}
#: share of the budget each training run may take (the rest: loading, scoring, timing);
#: AutoReg_Struct as much as PaDeLLM (its epoch costs about as many computed tokens), so
#: that the accuracy comparison trains both for the same epochs
TRAIN_SHARE = {"padellm": 0.25, "ar_struct": 0.25, "ar_aug": 0.08, "onestep": 0.07}
_DONE = "campaign.done"  # marker a finished job leaves in its output folder


@dataclass(frozen=True)
class Recipe:
    """The training recipe every method shares (only ``--format`` differs)."""

    dataset: str = "conll2003"
    base: str = "smollm2-135m"
    epochs: float = 4.0
    lr: float = 5e-4
    warmup: float = 0.03
    batch_tokens: int = 8192
    micro_tokens: int = 8192
    lora: bool = True
    lora_r: int = 16
    seed: int = 0
    limit: int | None = None  # training sentences (None: all)

    def train_args(self) -> list[str]:
        args = [
            "--dataset", self.dataset, "--base", self.base, "--epochs", f"{self.epochs:g}",
            "--lr", f"{self.lr:g}", "--warmup", f"{self.warmup:g}",
            "--batch-tokens", str(self.batch_tokens), "--micro-tokens", str(self.micro_tokens),
            "--seed", str(self.seed), "--lora-r", str(self.lora_r), "--save-every", "0",
            "--eval-limit", "0", "--overwrite",
        ]  # fmt: skip
        if not self.lora:
            args.append("--no-lora")
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        return args


@dataclass
class Job:
    """One ``padellm-ner`` command of the campaign.

    Attributes:
        name: e.g. ``train padellm``.
        argv: arguments after ``padellm-ner``.
        output: the folder (train, bench) or file (evaluate: its stdout) the job makes.
        needs: folders that must exist first (a method's trained model).
        epochs_from: a trained model whose ``epochs_done`` caps this job's ``--epochs``:
            the baselines train as far as PaDeLLM got, so "one recipe" stays true when
            the budget cut PaDeLLM's schedule short.
    """

    name: str
    argv: list[str]
    output: Path
    needs: list[Path] = field(default_factory=list)
    epochs_from: Path | None = None

    def resolved_argv(self) -> tuple[list[str], str]:
        """``argv`` with ``--epochs`` capped by ``epochs_from``; and a note saying so."""
        if self.epochs_from is None or "--epochs" not in self.argv:
            return list(self.argv), ""
        done = (_read_json(self.epochs_from / "train_result.json") or {}).get("epochs_done")
        at = self.argv.index("--epochs") + 1
        if not done or float(done) >= float(self.argv[at]):
            return list(self.argv), ""
        argv = list(self.argv)
        argv[at] = f"{float(done):g}"
        return argv, f"--epochs {argv[at]}: as far as {self.epochs_from.name} got"

    @property
    def writes_stdout(self) -> bool:
        """An ``evaluate --json`` job: its output file is what it prints."""
        return self.output.suffix == ".json"

    @property
    def done(self) -> bool:
        if self.writes_stdout:
            return self.output.is_file() and self.output.stat().st_size > 0
        return (self.output / _DONE).is_file()


@dataclass
class JobRecord:
    """What happened to one job (``campaign.json``)."""

    name: str
    status: str  # ok | failed | timeout | skipped (no time or a missing input) | done before
    wall_s: float
    command: str
    log: str
    detail: str = ""


def plan_jobs(
    out: Path,
    recipe: Recipe,
    methods: Sequence[str],
    device: str,
    eval_limit: int | None,
    latency_limit: int,
    dtype: str = "float32",
    budget_s: float | None = None,
) -> list[Job]:
    """The jobs in priority order: the default model first, its comparison next, speed last.

    PaDeLLM is trained and scored before anything else (it is the model a GPU session
    commits); AutoReg_Struct follows (the accuracy comparison); the other two baselines
    are trained before the latency run so that it has all four rows, and are scored on
    the full test set last (the latency run already gives their F1 on its sentences).

    With ``budget_s``, each training run gets ``--max-minutes`` of a share of it
    (``TRAIN_SHARE``) and ``--fit-schedule``: when the planned epochs would not fit, the
    trainer shortens its LR schedule from the measured step time, so the model it saves in
    time has a fully decayed learning rate (``epochs_done`` shows how far it got).
    """
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise InvalidInputError(f"--methods: use some of {', '.join(METHOD_NAMES)} (got {list(methods)})")
    model_dir = {m: out / "models" / m for m in methods}
    device_args = ["--device", device]
    limit = ["--limit", str(eval_limit)] if eval_limit else []

    def train(method: str) -> Job:
        cap = []
        if budget_s:
            minutes = f"{max(TRAIN_SHARE[method] * budget_s / 60, 0.01):.2f}"  # NOTE: train refuses 0
            cap = ["--max-minutes", minutes, "--fit-schedule"]
        return Job(
            f"train {method}",
            ["train", "--format", method, *recipe.train_args(), "--out", str(model_dir[method]),
             *device_args, *cap],
            model_dir[method],
            epochs_from=model_dir["padellm"] if method != "padellm" and "padellm" in methods else None,
        )  # fmt: skip

    def evaluate(method: str) -> Job:
        return Job(
            f"evaluate {method}",
            ["evaluate", "--model", str(model_dir[method]), "--dataset", recipe.dataset,
             "--split", "test", *limit, "--json", "--batch-sentences", "32",
             "--max-batch-size", "256", "--dtype", dtype, *device_args],
            out / "eval" / f"{method}.json",
            needs=[model_dir[method]],
        )  # fmt: skip

    first = [m for m in ("padellm", "ar_struct") if m in methods]
    rest = [m for m in methods if m not in first]
    jobs: list[Job] = []
    for method in first:
        jobs += [train(method), evaluate(method)]
    jobs += [train(m) for m in rest]
    models = ",".join(f"{m}={model_dir[m]}" for m in methods)
    jobs.append(Job(
        "bench latency",
        ["bench", "latency", "--dataset", recipe.dataset, "--split", "test",
         "--limit", str(latency_limit), "--models", models, "--dtype", dtype,
         "--out", str(out / "bench"), "--name", "latency", *device_args],
        out / "bench",
        needs=[model_dir[m] for m in methods],
    ))  # fmt: skip
    jobs += [evaluate(m) for m in rest]
    return jobs


def _run_job(job: Job, log_dir: Path, timeout_s: float) -> JobRecord:
    argv, note = job.resolved_argv()

    def detail(text: str = "") -> str:
        return "; ".join(filter(None, [text, note]))

    command = [sys.executable, "-m", "padellm_ner.cli", *argv]
    log = log_dir / (job.name.replace(" ", "_") + ".log")
    shown = "padellm-ner " + shlex.join(argv)
    start = time.perf_counter()
    job.output.parent.mkdir(parents=True, exist_ok=True)
    partial = job.output.with_suffix(".json.partial") if job.writes_stdout else None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w", encoding="utf-8") as err:
        stdout = open(partial, "w", encoding="utf-8") if partial else err  # noqa: SIM115
        try:
            proc = subprocess.run(command, stdout=stdout, stderr=err, timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired:
            return JobRecord(job.name, "timeout", time.perf_counter() - start, shown, str(log),
                             detail(f"stopped after {timeout_s:.0f} s"))  # fmt: skip
        finally:
            if partial:
                stdout.close()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        return JobRecord(job.name, "failed", wall, shown, str(log),
                         detail(f"exit {proc.returncode}: {tail[0][:300]}"))  # fmt: skip
    if partial:
        partial.replace(job.output)  # NOTE: only a finished report counts as done
    else:
        (job.output / _DONE).write_text(shown + "\n")
    return JobRecord(job.name, "ok", wall, shown, str(log), detail())


def run_campaign(
    jobs: Sequence[Job],
    out: Path,
    budget_s: float,
    header: dict[str, Any] | None = None,
    min_job_s: float = 20.0,
) -> list[JobRecord]:
    """Run ``jobs`` in order within ``budget_s`` seconds; write the summary after each.

    A job whose output exists is not run again; one whose inputs are missing (its
    model's training failed) is skipped; a job that would start with less than
    ``min_job_s`` left is skipped, so the summary is written before the budget ends.
    """
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    records: list[JobRecord] = []
    for job in jobs:
        left = deadline - time.monotonic()
        if job.done:
            records.append(JobRecord(job.name, "done before", 0.0, "", ""))
        elif missing := [str(p) for p in job.needs if not (p / _DONE).is_file()]:
            records.append(JobRecord(job.name, "skipped", 0.0, "", "", f"missing {', '.join(missing)}"))
        elif left < min_job_s:
            records.append(JobRecord(job.name, "skipped", 0.0, "", "", f"{left:.0f} s of budget left"))
        else:
            print(f"campaign: {job.name} (up to {left:.0f} s)", file=sys.stderr, flush=True)
            records.append(_run_job(job, log_dir, left))
            print(f"campaign: {job.name}: {records[-1].status} in {records[-1].wall_s:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        write_summary(out, records, header or {})
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summary_rows(out: Path, methods: Sequence[str]) -> list[list[str]]:
    """Per method: training figures (``train_result.json``) and full-test scores."""
    rows = []
    for method in methods:
        train = _read_json(out / "models" / method / "train_result.json") or {}
        score = _read_json(out / "eval" / f"{method}.json") or {}
        cells = [
            METHOD_NAMES[method],
            f"{train['epochs_done']:g}" if "epochs_done" in train else "-",
            f"{train['train_wall_s']:.0f}" if "train_wall_s" in train else "-",
            f"{train['raw_tokens_per_s']:.0f}" if "raw_tokens_per_s" in train else "-",
            f"{train['final_loss']:.4f}" if "final_loss" in train else "-",
        ]
        cells += [f"{score[k]:.2f}" if k in score else "-" for k in ("precision", "recall", "f1")]
        cells.append(str(score.get("num_sentences", "-")))
        rows.append(cells)
    return rows


def write_summary(out: Path, records: Sequence[JobRecord], header: dict[str, Any]) -> Path:
    """``campaign.json`` (everything) and ``CAMPAIGN.md`` (what a reader wants first)."""
    methods = header.get("methods", list(METHOD_NAMES))
    (out / "campaign.json").write_text(json.dumps(
        {**header, "jobs": [asdict(r) for r in records]}, indent=2) + "\n")  # fmt: skip
    lines = ["# Campaign: all four methods, one recipe", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "methods"]
    lines += ["", "| method | epochs | train s | tokens/s | final loss | P | R | F1 | test sentences |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(out, methods)]
    lines += ["", "| job | status | wall s | detail |", "|---|---|---:|---|"]
    lines += [f"| {r.name} | {r.status} | {r.wall_s:.0f} | {r.detail} |" for r in records]
    bench = out / "bench" / "latency.md"
    if bench.is_file():
        lines += ["", bench.read_text(encoding="utf-8")]
    path = out / "CAMPAIGN.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def export_models(out: Path, dst: Path, methods: Sequence[str], machine: str) -> list[Path]:
    """The servable copy of each trained method (``train.cli export``: fp16 adapter, no
    second tokenizer, a model card with the command, machine and test report) under
    ``dst/<method>``: what a GPU lease brings back to be committed."""
    from padellm_ner.evaluate import result_from_dict
    from padellm_ner.train.cli import main as train_main

    done = []
    for method in methods:
        run = out / "models" / method
        if not (run / _DONE).is_file():
            continue
        args = ["export", str(run), str(dst / method), "--command", (run / _DONE).read_text().strip(),
                "--machine", machine]  # fmt: skip
        score = _read_json(out / "eval" / f"{method}.json")
        if score is not None:
            report = out / "eval" / f"{method}.txt"
            report.write_text(result_from_dict(score).format_text() + "\n")
            args += ["--test-report", str(report)]
        if train_main(args) == 0:
            done.append(dst / method)
    return done


def run_campaign_cli(args: Any) -> int:
    """Handler of ``padellm-ner bench campaign``."""
    from padellm_ner.bench.report import machine_info, output_dir
    from padellm_ner.models import pick_device

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    recipe = Recipe(
        dataset=args.dataset, base=args.base, epochs=args.epochs, lr=args.lr,
        warmup=args.warmup, batch_tokens=args.batch_tokens, micro_tokens=args.micro_tokens,
        lora=args.lora, seed=args.seed, limit=args.train_limit,
    )  # fmt: skip
    out = output_dir(args.out)
    if getattr(args, "export", None):
        output_dir(args.export, "--export")
    jobs = plan_jobs(out, recipe, methods, args.device, args.eval_limit, args.latency_limit,
                     args.dtype, budget_s=args.budget_minutes * 60)
    info = machine_info(pick_device(args.device))
    header = {
        "methods": methods,
        "machine": f"{info.gpu or 'no GPU'}; {info.cpu}, {info.num_cores} cores; "
                   f"torch {info.torch_version}, Python {info.python}",
        "commit": info.git_commit,
        "recipe": " ".join(recipe.train_args()),
        "command": "padellm-ner " + shlex.join(sys.argv[1:]),
        "budget_s": args.budget_minutes * 60,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    records = run_campaign(jobs, out, args.budget_minutes * 60, header)
    if args.export:
        export_models(out, Path(args.export), methods, header["machine"])
    print((out / "CAMPAIGN.md").read_text(encoding="utf-8"))
    bad = [r for r in records if r.status in ("failed", "timeout")]
    return 1 if bad else 0
