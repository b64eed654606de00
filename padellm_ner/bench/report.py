"""Benchmark output: a header about the machine, markdown tables, PNG charts, raw JSON.

Every benchmark writes three files with one stem under ``--out``: ``<name>.md`` (header +
table), ``<name>.png`` (chart) and ``<name>.json`` (raw timings). The table is also
printed to the console.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "output_dir",
    "Table",
    "MachineInfo",
    "machine_info",
    "format_command",
    "render_markdown",
    "write_markdown",
    "write_json",
    "print_table",
    "plot_latency_bars",
    "plot_load",
]

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Table:
    """A titled table of already formatted cells (one list per row, ``columns`` long)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the table

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        out = f"## {self.title}\n\n" + "\n".join(lines) + "\n"
        if self.notes:
            out += "\n" + "\n".join(f"- {note}" for note in self.notes) + "\n"
        return out


@dataclass
class MachineInfo:
    """Where and what was measured (the markdown header)."""

    cpu: str
    num_cores: int
    gpu: str | None
    torch_version: str
    git_commit: str
    date: str
    python: str = field(default_factory=platform.python_version)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git_commit() -> str:
    """The short commit, with ``-dirty`` when tracked files differ from it."""

    def git(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *cmd], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=check
        )

    try:
        commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
        dirty = git("diff-index", "--quiet", "HEAD", "--", check=False).returncode == 1
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        # NOTE: a copy of the tree without .git (a GPU box): the caller says which commit.
        return os.environ.get("PADELLM_COMMIT", "unknown")


def machine_info(device: str | None = None) -> MachineInfo:
    """CPU model and cores, the GPU name when ``device`` is CUDA, torch version, git commit."""
    import torch

    gpu = None
    if device and device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        gpu = torch.cuda.get_device_name(index)
    return MachineInfo(
        cpu=_cpu_model(),
        num_cores=os.cpu_count() or 1,
        gpu=gpu,
        torch_version=torch.__version__,
        git_commit=_git_commit(),
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def format_command(args: Any, keys: Sequence[str]) -> str:
    """The ``padellm-ner bench ...`` command line that reproduces ``args`` (named options)."""
    import shlex

    parts = ["padellm-ner", "bench", args.bench_command]
    for key in keys:
        value = getattr(args, key, None)
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def render_markdown(
    title: str,
    machine: MachineInfo,
    command: str,
    tables: Sequence[Table],
    extra_header: dict[str, str] | None = None,
) -> str:
    """The whole markdown document: title, header bullet list, then the tables."""
    header = {
        "Machine": (
            f"GPU {machine.gpu}; CPU {machine.cpu} ({machine.num_cores} cores)"
            if machine.gpu
            else f"CPU {machine.cpu} ({machine.num_cores} cores)"
        ),
        "torch": machine.torch_version,
        "Commit": f"`{machine.git_commit}`",
        "Date": machine.date,
        **(extra_header or {}),
        "Command": f"`{command}`",
    }
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines.append("")
    body = "\n".join(table.to_markdown() for table in tables)
    return "\n".join(lines) + "\n" + body


def output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Make the output folder before the run: a bench that ran for an hour must not
    find out at the end that ``--out`` names a file or a folder it cannot write."""
    from padellm_ner.errors import InvalidInputError

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInputError(f"{option} {folder}: a file is in the way; give a folder") from None
    except OSError as exc:
        raise InvalidInputError(f"{option} {folder}: cannot create it ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise InvalidInputError(f"{option} {folder}: not writable")
    return folder


def write_markdown(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def print_table(table: Table) -> None:
    """The table on the console (``rich`` when available, else the markdown)."""
    try:
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:  # pragma: no cover - rich is a dependency
        print(table.to_markdown())
        return
    rich_table = RichTable(title=table.title)
    for i, column in enumerate(table.columns):
        rich_table.add_column(column, justify="left" if i == 0 else "right")
    for row in table.rows:
        rich_table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        # NOTE: piped output defaults to 80 columns, which truncates the numbers.
        console = Console(width=200)
    console.print(rich_table)
    for note in table.notes:
        console.print(f"  {note}", markup=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # NOTE: no display on servers; must precede pyplot's import.
    import matplotlib.pyplot as plt

    return plt


def plot_latency_bars(
    path: Path,
    names: Sequence[str],
    means_ms: Sequence[float],
    reference: str,
    title: str,
) -> Path:
    """Figure-3-style bars: mean latency per method, speed-up of ``reference`` on each bar.

    Args:
        names: bar labels, in order.
        means_ms: mean latency of each bar.
        reference: the name whose speed-up over every other bar is written on it.
    """
    plt = _pyplot()
    ref_ms = means_ms[list(names).index(reference)] if reference in names else None
    fig, ax = plt.subplots(figsize=(1.6 * max(3, len(names)) + 1, 4.2))
    colors = ["#d62728" if n.startswith("PaDeLLM") else "#1f77b4" for n in names]
    bars = ax.bar(range(len(names)), means_ms, color=colors)
    top = max(means_ms, default=1.0) or 1.0
    for bar, name, ms in zip(bars, names, means_ms):
        label = f"{ms:.1f} ms"
        if ref_ms and name != reference:
            label += f"\n{ms / ref_ms:.2f}x"
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.01 * top,
            label,
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("mean latency per sentence (ms)")
    ax.set_ylim(0, top * 1.25)
    ax.set_title(f"{title}\n(Nx = speed-up of {reference} over the bar)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_load(
    path: Path,
    series: dict[str, list[tuple[int, float, float, float]]],
    title: str,
) -> Path:
    """Throughput and p50/p99 latency against concurrency, one line per server label.

    Args:
        series: label -> ``(concurrency, sentences_per_s, p50_ms, p99_ms)`` points.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in series.items():
        points = sorted(points)
        xs = [p[0] for p in points]
        left.plot(xs, [p[1] for p in points], marker="o", label=label)
        right.plot(xs, [p[2] for p in points], marker="o", label=f"{label} p50")
        right.plot(xs, [p[3] for p in points], marker="x", linestyle="--", label=f"{label} p99")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.legend(fontsize=8)
    left.set_ylabel("throughput (sentences/s)")
    right.set_ylabel("latency (ms)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
