"""The training curve of a run and of the runs it warm-started from, as one PNG.

A default adapter trained in stages (``--init-adapter``) has its loss spread over several
run folders; the model card shows them on one axis (training sentences seen) with each
stage's dev F1, so a reader sees where more data still helps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from padellm_ner.bench.report import _pyplot
from padellm_ner.model_info import META_FILE

__all__ = ["stage_dirs", "plot_training_curve"]


def stage_dirs(run: str | Path) -> list[Path]:
    """``run`` and the runs it warm-started from, oldest first (as recorded in padellm.json)."""
    dirs = [Path(run)]
    while True:
        meta = dirs[0] / META_FILE
        if not meta.is_file():
            break
        init = json.loads(meta.read_text(encoding="utf-8")).get("train", {}).get("init_adapter")
        if not init or Path(init) in dirs or not (Path(init) / META_FILE).is_file():
            break
        dirs.insert(0, Path(init))
    return dirs


def _log(run: Path) -> list[dict[str, Any]]:
    path = run / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_curve(run: str | Path, out: str | Path) -> Path | None:
    """Write the loss of every stage against training sentences seen; ``None`` if no log."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    seen = 0.0
    drawn = False
    f1_points = []
    for i, run_dir in enumerate(stage_dirs(run)):
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
        train = meta.get("train", {})
        n = sum(train.get("sentences", {}).values())
        rows = _log(run_dir)
        if rows:
            xs = [seen + n * float(r["epoch"]) for r in rows]
            ax.plot(xs, [r["loss"] for r in rows], marker=".", label=f"stage {i + 1} ({run_dir.name})")
            drawn = True
        seen += n * min(1.0, float(train.get("epochs_done") or 1.0))
        for ev in (meta.get("eval") or {}).values():
            f1 = (ev.get("f1") or {}).get("f1")
            if f1 is not None:
                f1_points.append((seen, f1))
        ax.axvline(seen, color="grey", linewidth=0.5, linestyle=":")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("training sentences seen")
    ax.set_ylabel("train loss (target tokens)")
    ax.legend(fontsize=7, loc="upper left")
    if f1_points:
        ax2 = ax.twinx()
        ax2.plot(*zip(*f1_points), color="black", marker="s", linestyle="--", label="dev F1")
        for x, f1 in f1_points:
            ax2.annotate(f"{f1:.1f}", (x, f1), textcoords="offset points", xytext=(-6, 6), fontsize=7)
        ax2.set_ylabel("dev micro-F1 (first sentences)")
        ax2.set_ylim(0, 100)
        ax2.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{Path(run).name}: loss per stage, dev F1 after each", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
