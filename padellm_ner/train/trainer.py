"""The training loop: LoRA (or full) fine-tuning of a causal LM on tokenized pairs.

AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on CUDA and
fp32 on CPU. Checkpoints under ``<out>/checkpoints/step-N`` hold the trainable weights,
the optimizer, the scheduler, every RNG and the data position, so ``resume=True``
continues exactly where the latest one stopped. The final save is an adapter (or a full
model) plus the tokenizer files; ``padellm.json`` is written by the caller.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from padellm_ner.errors import InvalidInputError
from padellm_ner.models import (
    BASE_MODELS,
    avoid_cudnn_attention,
    end_token_id,
    load_tokenizer,
    pick_device,
    resolve_model_dir,
    same_model,
)
from padellm_ner.train.dataset import (
    PackedUnit,
    Step,
    TokenizedPair,
    collate_packed,
    num_steps,
    pack_unit,
    plan_epoch,
)

__all__ = ["TrainConfig", "TrainResult", "Trainer", "latest_checkpoint", "lr_factor"]

logger = logging.getLogger(__name__)

_STATE_FILE = "trainer_state.pt"
_CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one run (mirrors ``padellm-ner train`` options)."""

    out: str
    base: str = "smollm2-135m"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    init_adapter: str | None = None  # warm start: continue training this LoRA adapter folder
    epochs: float = 1.0
    max_steps: int | None = None
    batch_tokens: int = 4096  # padded tokens per optimizer step
    micro_tokens: int = 1024  # padded tokens per forward pass (bounds memory)
    row_tokens: int | None = 256  # pack units side by side in rows this long (None: one per row)
    lr: float = 2e-4
    warmup: float = 0.03  # fraction of the steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 200
    keep_checkpoints: int = 2
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    log_every: int = 10
    max_minutes: float | None = None  # stop (checkpoint + final save) after this wall time
    # stop after this step, schedule unchanged: reproduces a run that --max-minutes cut short
    stop_at_step: int | None = None
    # with max_minutes: shorten the schedule from the measured step time so the LR decays to
    # 0 inside the limit (a cut mid-schedule leaves the weights of a high learning rate)
    fit_schedule: bool = False
    progress: bool = True
    # what the training data is (format, datasets, labels): a --resume must match it, as it
    # must match base and LoRA shape (checked in _load_checkpoint)
    recipe: dict[str, Any] = field(default_factory=dict)


#: TrainConfig fields a resumed run must share with its checkpoint (the weights' meaning)
_RESUME_MUST_MATCH = ("base", "lora", "lora_r", "lora_alpha", "recipe")


@dataclass
class TrainResult:
    """What a run did (also written to ``<out>/train_result.json``)."""

    steps: int
    total_steps: int
    epochs_done: float
    final_loss: float  # mean train loss over the last ``log_every`` steps (half a short run)
    first_loss: float
    tokens_per_s: float  # non-pad tokens through forward+backward per second, this process
    raw_tokens_per_s: float  # the same in unpacked sequence tokens (what was learnt from)
    wall_s: float  # this process; ``train_wall_s`` sums resumed runs
    train_wall_s: float
    num_sequences: int
    num_tokens_seen: int  # unpacked sequence tokens, all runs
    losses: list[float] = field(default_factory=list)  # one per step, all runs
    planned_steps: int = 0  # the schedule before ``fit_schedule`` shortened it (else total_steps)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


#: steps timed, after the first of a run (warm-up), before a schedule is fitted to the time
FIT_PROBE_STEPS = 5
#: share of the time left that a fitted schedule plans to use (the rest absorbs jitter)
FIT_MARGIN = 0.95


def fit_total_steps(step: int, total: int, s_per_step: float, left_s: float) -> int:
    """``total``, or fewer steps when the rest at ``s_per_step`` would outlast ``left_s``.

    Never below ``step + 1``: the step after this one is the last, at a learning rate of 0.
    """
    if s_per_step <= 0:
        return total
    fits = step + int(FIT_MARGIN * max(0.0, left_s) / s_per_step)
    return max(step + 1, min(total, fits))


@dataclass
class _ScheduleFitter:
    """Times this run's steps after its first and says when the planned schedule would
    outlast ``--max-minutes`` (``fit_schedule``)."""

    limit_s: float
    t0: float
    probe: tuple[int, float] | None = None  # (steps done, time) after this run's first step

    def shorter(self, done: int, total: int) -> tuple[int, float] | None:
        """A fitted total below ``total`` and the step time it rests on, or None."""
        now = time.perf_counter()
        if self.probe is None:
            self.probe = (done, now)
            return None
        if done - self.probe[0] < FIT_PROBE_STEPS:
            return None
        s_per_step = (now - self.probe[1]) / (done - self.probe[0])
        fitted = fit_total_steps(done, total, s_per_step, self.limit_s - (now - self.t0))
        return (fitted, s_per_step) if fitted < total else None


def latest_checkpoint(out: str | Path) -> Path | None:
    """The highest ``step-N`` under ``<out>/checkpoints`` that holds a complete state."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _CKPT_RE.match(p.name)) and (p / _STATE_FILE).exists()
    ]
    return max(found)[1] if found else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after the checkpoint a run resumes from: they are run
    again, and were logged twice (the training curve drew both)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) > step:
                continue
        except (ValueError, AttributeError):
            continue  # NOTE: a line torn by the kill
        kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


class Trainer:
    """Fine-tunes ``config.base`` on tokenized pairs and saves the result to ``config.out``."""

    def __init__(self, config: TrainConfig) -> None:
        import torch

        self.config = config
        self.out = Path(config.out)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = pick_device(config.device)
        avoid_cudnn_attention(self.device)
        self.base_dir = resolve_model_dir(config.base)
        self.tokenizer = load_tokenizer(str(self.base_dir))
        self.end_id = end_token_id(self.tokenizer, self.base_dir)
        self.model = self._build_model()
        self._pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        )

    # -- model -------------------------------------------------------------------------

    def _build_model(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.config.seed)
        # NOTE: sdpa takes the packed rows' tree mask ([n, 1, L, L] bool) as it is.
        model = AutoModelForCausalLM.from_pretrained(
            self.base_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        model.config.use_cache = False
        if self.config.lora and self.config.init_adapter:
            from peft import PeftModel

            # NOTE: rank/alpha/targets come from the adapter's own config, not from the options.
            model = PeftModel.from_pretrained(model, self.config.init_adapter, is_trainable=True)
        elif self.config.lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=self.config.lora_r,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=self.config.lora_dropout,
                # NOTE: every linear projection (q/k/v/o, gate/up/down); lm_head excluded.
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        model.to(self.device)
        model.train()
        return model

    @property
    def _core_and_head(self) -> tuple[Any, Any]:
        base = self.model.get_base_model() if self.config.lora else self.model
        return getattr(base, base.base_model_prefix), base.get_output_embeddings()

    def trainable_parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _loss_sum(self, batch: dict[str, Any]) -> Any:
        """Weighted cross-entropy summed over the target tokens of a packed batch.

        NOTE: the LM head runs only on positions that predict a target token; the prompt
        is most of every sequence, and the 49k-word head is a large share of the compute.
        """
        import torch
        import torch.nn.functional as F

        core, head = self._core_and_head
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.startswith("cuda")
            else torch.autocast("cpu", enabled=False)
        )
        with autocast:
            hidden = core(
                input_ids=batch["input_ids"].to(self.device),
                position_ids=batch["position_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
            ).last_hidden_state  # [n, L, d]
            flat = hidden.reshape(-1, hidden.shape[-1])  # [n * L, d]
            logits = head(flat.index_select(0, batch["loss_index"].to(self.device)))
        losses = F.cross_entropy(
            logits.float(), batch["loss_targets"].to(self.device), reduction="none"
        )  # [num_items]
        return (losses * batch["loss_weights"].to(self.device)).sum()

    def _rows(self, units: Sequence[PackedUnit], rows: Sequence[Sequence[int]]) -> dict[str, Any]:
        return collate_packed([[units[i] for i in row] for row in rows], self._pad_id)

    # -- checkpoints ---------------------------------------------------------------------

    def _trainable_state(self) -> dict[str, Any]:
        return {
            n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad
        }

    def _save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        import torch

        root = self.out / "checkpoints"
        path = root / f"step-{step}"
        tmp = root / f".step-{step}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        torch.save({**state, "weights": self._trainable_state()}, tmp / _STATE_FILE)
        if self.config.lora:
            # NOTE: a checkpoint is also a usable adapter, in case the run never finishes;
            # with the run's padellm.json, so it decodes with the run's method and labels.
            self._save_adapter(tmp)
            if (meta := self.out / "padellm.json").is_file():
                shutil.copy2(meta, tmp / meta.name)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)  # atomic: a crash mid-save leaves the previous checkpoint intact
        olds = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name)))
        for _, old in olds[: max(0, len(olds) - self.config.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        import torch

        state = torch.load(path / _STATE_FILE, map_location="cpu", weights_only=False)
        saved, ours = dict(state.get("config") or {}), asdict(self.config)
        if same_model(saved.get("base"), ours["base"]):
            saved["base"] = ours["base"]  # NOTE: "tiny" and "./tiny" are one base
        differ = [f"{key} {saved[key]!r} -> {ours[key]!r}" for key in _RESUME_MUST_MATCH
                  if key in saved and saved[key] != ours[key]]  # fmt: skip
        if differ:
            raise InvalidInputError(
                f"--resume: the checkpoint {path} was trained differently ({'; '.join(differ)}); "
                "resume with its options, or give another --out"
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.pop("weights").items():
                params[name].copy_(value.to(params[name].device))
        return state

    def _save_adapter(self, out: Path) -> None:
        self.model.save_pretrained(out)
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        # NOTE: a base given by name is recorded by name so the adapter loads anywhere.
        cfg["base_model_name_or_path"] = (
            self.config.base if self.config.base in BASE_MODELS else str(self.base_dir.resolve())
        )
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    def save_final(self) -> None:
        """The adapter (or the full model) plus tokenizer files, into ``config.out``."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.config.lora:
            self._save_adapter(self.out)
        else:
            self.model.save_pretrained(self.out)
        self.tokenizer.save_pretrained(self.out)

    # -- loop ----------------------------------------------------------------------------

    def train(self, seqs: Sequence[PackedUnit | TokenizedPair]) -> TrainResult:
        """Run (or resume) training and save the final model.

        Args:
            seqs: training units; a ``TokenizedPair`` is a unit of one sequence. The data
                order depends only on the units' lengths, the seed and the epoch.
        """
        import torch
        from tqdm import tqdm

        cfg = self.config
        if not seqs:
            # NOTE: e.g. every sequence longer than --max-len: the user's to fix
            raise InvalidInputError("no training sequences (are they all longer than --max-len?)")
        units = [u if isinstance(u, PackedUnit) else pack_unit([u]) for u in seqs]
        lengths = [len(u) for u in units]
        plans: dict[int, list[Step]] = {}

        def plan(epoch: int) -> list[Step]:
            if epoch not in plans:
                plans.clear()
                plans[epoch] = plan_epoch(
                    lengths, cfg.batch_tokens, cfg.micro_tokens, cfg.seed, epoch, cfg.row_tokens
                )
            return plans[epoch]

        steps_per_epoch = len(plan(0))
        total = planned = num_steps(cfg.epochs, steps_per_epoch, cfg.max_steps)
        warmup_steps = int(round(cfg.warmup * total))
        params = self.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup_steps)
        )
        step, epoch, pos = 0, 0, 0
        losses: list[float] = []
        prior_wall = 0.0
        num_tokens_seen = 0
        random.seed(cfg.seed)
        if cfg.resume and (ckpt := latest_checkpoint(self.out)) is not None:
            state = self._load_checkpoint(ckpt)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, epoch, pos = state["step"], state["epoch"], state["pos"]
            losses = list(state["losses"])
            prior_wall = float(state.get("train_wall_s", 0.0))
            num_tokens_seen = int(state.get("num_tokens_seen", 0))
            random.setstate(state["rng_python"])
            torch.set_rng_state(state["rng_torch"])
            if state.get("rng_cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
            warmup_steps = int(state.get("warmup_steps", warmup_steps))
            if cfg.fit_schedule and 0 < int(state.get("total_steps") or 0) < total:
                total = int(state["total_steps"])  # the schedule fitted before the cut
            elif state.get("total_steps") != total:
                logger.warning(
                    "resuming with %s total steps (checkpoint had %s)",
                    total,
                    state.get("total_steps"),
                )
            _truncate_log(self.out / "train_log.jsonl", step)
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt, step, epoch, pos)
            print(f"resumed from {ckpt} at step {step}", file=sys.stderr, flush=True)
        elif cfg.resume:
            logger.warning("--resume: no checkpoint under %s; starting fresh", self.out)
        if step == 0:
            torch.manual_seed(cfg.seed)  # NOTE: a resumed run keeps its restored RNG instead
        logger.info(
            "%d sequences, %d steps/epoch, %d total steps, warmup %d, %d trainable params",
            len(seqs),
            steps_per_epoch,
            total,
            warmup_steps,
            sum(p.numel() for p in params),
        )

        def snapshot() -> dict[str, Any]:
            return {
                "step": step,
                "epoch": epoch,
                "pos": pos,
                "total_steps": total,
                "warmup_steps": warmup_steps,
                "losses": losses,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_python": random.getstate(),
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "train_wall_s": prior_wall + (time.perf_counter() - t0),
                "num_tokens_seen": num_tokens_seen,
                "config": asdict(cfg),
            }

        self.model.train()
        t0 = time.perf_counter()
        tokens_this_run = 0
        raw_tokens_this_run = 0
        saved_at = step
        skipped = 0
        fitter = (
            _ScheduleFitter(cfg.max_minutes * 60, t0)
            if cfg.fit_schedule and cfg.max_minutes is not None
            else None
        )
        bar = tqdm(
            total=total,
            initial=step,
            desc="train",
            unit="step",
            disable=not cfg.progress,
            mininterval=10.0,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
            # NOTE: a resume at or past --stop-at-step used to train one step more.
            logger.warning("step %d already reaches --stop-at-step %d: nothing to train", step, cfg.stop_at_step)
        while step < total and (cfg.stop_at_step is None or step < cfg.stop_at_step):
            if pos >= len(plan(epoch)):
                epoch, pos = epoch + 1, 0
            current = plan(epoch)[pos]
            step_units = [units[i] for mb in current.micro_batches for row in mb for i in row]
            # NOTE: the loss is the mean over every target token of the step, as unpacked.
            num_target = sum(u.num_target_tokens for u in step_units)
            loss_total = 0.0
            for mb in current.micro_batches:
                loss_sum = self._loss_sum(self._rows(units, mb))
                (loss_sum / num_target).backward()
                loss_total += float(loss_sum.detach())
            tokens_this_run += sum(len(u) for u in step_units)
            raw_tokens_this_run += sum(u.num_raw_tokens for u in step_units)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                # NOTE: one NaN step would poison the weights for good; drop it, say so.
                skipped += 1
                logger.warning("step %d: gradient norm %s; optimizer step skipped", step, grad_norm)
            fit = fitter.shorter(step + 1, total) if fitter is not None else None
            if fit is not None:
                fitted, s_per_step = fit
                if total == planned:
                    msg = (
                        f"fit schedule: {planned} steps at {s_per_step:.2f} s/step "
                        f"outlast --max-minutes {cfg.max_minutes:g}; the LR now decays "
                        f"to 0 by step {fitted} ({fitted / steps_per_epoch:.2f} epochs)"
                    )
                    logger.warning(msg)
                    bar.write(msg, file=sys.stderr)
                total = fitted  # NOTE: the scheduler's lambda reads it
                if step + 1 < warmup_steps:
                    warmup_steps = max(step + 1, int(round(cfg.warmup * total)))
                bar.total = total
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, pos = step + 1, pos + 1
            num_tokens_seen += sum(u.num_raw_tokens for u in step_units)
            losses.append(loss_total / num_target)
            elapsed = time.perf_counter() - t0
            tok_s = tokens_this_run / max(elapsed, 1e-9)
            recent = losses[-cfg.log_every :]
            bar.set_postfix(
                loss=f"{sum(recent) / len(recent):.4f}", tok_s=f"{tok_s:.0f}", refresh=False
            )
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                record = {
                    "step": step,
                    "epoch": round(epoch + pos / max(1, len(plan(epoch))), 4),
                    "loss": round(sum(recent) / len(recent), 5),
                    "lr": scheduler.get_last_lr()[0],
                    "total_steps": total,
                    "grad_norm": round(float(grad_norm), 4),
                    "skipped_steps": skipped,
                    "tokens_per_s": round(tok_s, 1),
                    "raw_tokens_per_s": round(raw_tokens_this_run / max(elapsed, 1e-9), 1),
                    "elapsed_s": round(elapsed, 1),
                }
                self.out.mkdir(parents=True, exist_ok=True)
                with open(self.out / "train_log.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                bar.write(json.dumps(record), file=sys.stderr)
            out_of_time = cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60
            at_stop = cfg.stop_at_step is not None and step >= cfg.stop_at_step
            if cfg.save_every and (step % cfg.save_every == 0 or out_of_time or at_stop) and step < total:
                self._save_checkpoint(step, snapshot())
                saved_at = step
            if out_of_time or at_stop:
                why = "--max-minutes reached" if out_of_time else "--stop-at-step reached"
                logger.warning("stopping at step %d of %d: %s", step, total, why)
                break
        bar.close()
        wall = time.perf_counter() - t0
        if step != saved_at and cfg.save_every:
            self._save_checkpoint(step, snapshot())
        self.save_final()
        # NOTE: means over log_every steps, but never the same steps at both ends (a short
        # run showed "loss 10.80 -> 10.80" while it fell): halves of a run under 2 windows
        window = max(1, min(cfg.log_every, len(losses) // 2))
        recent = losses[-window:] or [float("nan")]
        first = losses[:window] or [float("nan")]
        result = TrainResult(
            steps=step,
            total_steps=total,
            epochs_done=round(epoch + pos / max(1, len(plan(epoch))), 4),
            final_loss=sum(recent) / len(recent),
            first_loss=sum(first) / len(first),
            tokens_per_s=tokens_this_run / max(wall, 1e-9),
            raw_tokens_per_s=raw_tokens_this_run / max(wall, 1e-9),
            wall_s=wall,
            train_wall_s=prior_wall + wall,
            num_sequences=sum(u.num_sequences for u in units),
            num_tokens_seen=num_tokens_seen,
            losses=losses,
            planned_steps=planned,
        )
        summary = {k: v for k, v in asdict(result).items() if k != "losses"}
        (self.out / "train_result.json").write_text(json.dumps(summary, indent=2) + "\n")
        return result

    def eval_loss(self, seqs: Sequence[PackedUnit | TokenizedPair]) -> float:
        """Mean per-token loss on target tokens (no grad), e.g. on dev pairs."""
        import torch

        if not seqs:
            return float("nan")
        units = [u if isinstance(u, PackedUnit) else pack_unit([u]) for u in seqs]
        lengths = [len(u) for u in units]
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for step in plan_epoch(
                lengths,
                self.config.micro_tokens,
                self.config.micro_tokens,
                0,
                0,
                self.config.row_tokens,
            ):
                for mb in step.micro_batches:
                    total += float(self._loss_sum(self._rows(units, mb)))
                    count += sum(units[i].num_target_tokens for row in mb for i in row)
        self.model.train()
        return total / max(count, 1)
