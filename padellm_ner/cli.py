"""``padellm-ner``: extract, serve, train, evaluate, bench.

Each subcommand's work lives in its own module; this file only declares arguments and
turns user errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from padellm_ner.cli_types import (
    float_above,
    float_at_least,
    fraction,
    hedge_threshold,
    int_at_least,
    int_between,
    port,
)
from padellm_ner.errors import PadellmError
from padellm_ner.extract import MODEL_DEFAULTS
from padellm_ner.lang import LANGS
from padellm_ner.limits import MAX_BATCH_WINDOW_US
from padellm_ner.models import DTYPE_CHOICES

__all__ = ["main", "build_parser"]

# subcommand -> "module:function" taking the parsed args and returning an exit status
_HANDLERS = {
    "extract": "padellm_ner.extract:run_extract",
    "serve": "padellm_ner.serving.serve:run_serve",
    "train": "padellm_ner.train.cli:run_train",
    "evaluate": "padellm_ner.evaluate:run_evaluate",
    "bench": "padellm_ner.bench.cli:run_bench",
}


class _HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default, unless it is unset (None, a flag's False)
    or the help already says what happens by default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default in (None, False, argparse.SUPPRESS)
        if unset or not action.option_strings or "default" in text:
            return action.help
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the option and pointing at ``--help`` (argparse
    prints the whole usage first: 15 lines for ``extract``), exit status 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: ANN201 (argparse's signature: never returns)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    # NOTE: each help names its default: extract unsets them (see there), so argparse cannot
    p.add_argument("--model", default=MODEL_DEFAULTS["model"],
                   help="'default' (embedded, the default), a base name (smollm2-135m, gemma3-270m), "
                        "an HF folder or a LoRA adapter folder")
    p.add_argument("--device", default=MODEL_DEFAULTS["device"],
                   help=f"cpu, cuda, cuda:N or auto (default: {MODEL_DEFAULTS['device']})")
    p.add_argument("--dtype", default=MODEL_DEFAULTS["dtype"], choices=DTYPE_CHOICES,
                   help=f"weights' dtype (default: {MODEL_DEFAULTS['dtype']}: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-batch-size", type=int_at_least(1), default=MODEL_DEFAULTS["max_batch_size"],
                   help=f"sequences decoded together (default: {MODEL_DEFAULTS['max_batch_size']})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="padellm-ner", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract entities from text, a JSONL file, or via a server")
    p.add_argument("text", nargs="?", help="the text (omit with --input)")
    p.add_argument("--labels", nargs="+", help="entity labels (default: the model's labels)")
    p.add_argument("--input", help="JSONL file, one {\"text\": ...} (or {\"id\", \"text\", \"labels\"}) per line")
    p.add_argument("--output", help="JSONL output (with --input); a rerun skips lines already done")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--batch-sentences", type=int_at_least(1), default=8,
                   help="with --input: lines decoded together (in process) or in flight "
                        "together (--server); a rerun redoes at most one batch")
    p.add_argument("--server", help="host:port of a padellm-ner Triton server (gRPC)")
    p.add_argument("--timeout", type=float_above(0), default=60.0, help="seconds per request with --server")
    p.add_argument("--root-cert", metavar="PEM",
                   help="with --server: talk TLS, trusting this CA (the server's --grpc-server-cert or its issuer)")
    p.add_argument("--client-cert", metavar="PEM", help="with --root-cert, mutual TLS: this client's certificate")
    p.add_argument("--client-key", metavar="PEM", help="with --client-cert: its private key")
    p.add_argument("--tls-server-name", metavar="HOST",
                   help="with --root-cert: verify the server's certificate against this name, not --server's host")
    p.add_argument("--dedup", choices=["string", "span", "off"], default="string",
                   help="cross-label de-duplication: by string (the paper), by span, or none")
    p.add_argument("--max-mentions", type=int_at_least(1), default=16, help="bound on mentions per label")
    p.add_argument("--lang", choices=LANGS, default=None, help="prompt language (default: detect)")
    p.add_argument("--count-hedge", type=hedge_threshold, default=None, metavar="P",
                   help="PaDeLLM: also decode mention n+1 of a count n less probable than P "
                        "(0 = off, the paper; default: the model's recorded value)")
    _add_model_args(p)
    # NOTE: unset by default so that `extract --server` can tell a given one (the server's
    # model decides there) from the default; run_extract fills in the defaults
    p.set_defaults(**{name: None for name in MODEL_DEFAULTS})

    p = sub.add_parser("serve", help="run tritonserver with the padellm-ner model repository")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--grpc-port", type=port, default=8001, help="tritonserver's gRPC port (clients)")
    p.add_argument("--http-port", type=port, default=8000, help="tritonserver's HTTP port (health)")
    p.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics port")
    p.add_argument("--repository", help="where to assemble the model repository (default: a temp dir)")
    p.add_argument("--drain-timeout", type=float_at_least(0), default=25.0, metavar="S",
                   help="on Ctrl-C/SIGTERM, seconds the requests in flight get to finish while new "
                        "ones are refused (0: stop at once; keep it under your orchestrator's grace period)")
    p.add_argument("--labels", nargs="+", help="default labels of the served model")
    p.add_argument("--llm-backend", choices=["python", "tensorrtllm"], default="python",
                   help="tensorrtllm: a tritonserver that has NVIDIA's tensorrtllm backend (not "
                        "the one bundled here) and --engine-dir")
    p.add_argument("--engine-dir", help="--llm-backend tensorrtllm: the TensorRT-LLM engine folder")
    p.add_argument(
        "--llm-transport", choices=["grpc", "bls"], default=None,
        help="how the orchestrator calls the LLM model: gRPC loopback to this server (default; "
             "TLS when the server's gRPC is) or BLS",
    )
    p.add_argument("--grpc-server-cert", metavar="PEM",
                   help="serve gRPC over TLS with this certificate (with --grpc-server-key)")
    p.add_argument("--grpc-server-key", metavar="PEM", help="the TLS certificate's private key")
    p.add_argument("--grpc-root-cert", metavar="PEM",
                   help="mutual TLS: clients must present a certificate signed by this CA")
    p.add_argument("--grpc-loopback-ca", metavar="PEM",
                   help="TLS: the CA the orchestrator's loopback trusts (default: --grpc-server-cert "
                        "and --grpc-root-cert; give the issuer of a CA-signed --grpc-server-cert)")
    p.add_argument("--grpc-loopback-cert", metavar="PEM",
                   help="mutual TLS: the orchestrator's client certificate (default: --grpc-server-cert)")
    p.add_argument("--grpc-loopback-key", metavar="PEM",
                   help="mutual TLS: its private key (default: --grpc-server-key)")
    p.add_argument(
        "--batch-window-us", type=int_between(0, MAX_BATCH_WINDOW_US),
        help="torch llm model: when idle, wait this long for more requests before a step (default 5000)",
    )
    p.add_argument("--count-hedge", type=hedge_threshold, default=None, metavar="P",
                   help="PaDeLLM: hedge counts less probable than P (see extract; default: the model's)")

    p = sub.add_parser("train", help="fine-tune a base model (PaDeLLM or a baseline format)")
    p.add_argument("--format", choices=["padellm", "ar_aug", "ar_struct", "onestep"], default="padellm",
                   help="PaDeLLM or a baseline's output format")
    p.add_argument("--dataset", required=True, help="NAME[,NAME...] under shared/datasets or a folder path")
    p.add_argument("--base", default="smollm2-135m", help="base model name or HF folder")
    p.add_argument("--out", required=True, help="output folder (adapter or full model)")
    p.add_argument("--labels-file", help="JSON {tag: label words} for the prompts")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True,
                   help="train a LoRA adapter (default) or the full model (--no-lora)")
    p.add_argument("--lora-r", type=int_at_least(1), default=16, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int_at_least(1), default=32, help="LoRA scaling")
    p.add_argument("--epochs", type=float_above(0), default=1.0, help="passes over the data")
    p.add_argument("--max-steps", type=int_at_least(1), default=None, help="stop after this many optimizer steps")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="use only the first N training sentences")
    p.add_argument("--batch-tokens", type=int_at_least(1), default=4096, help="tokens per optimizer step (length-grouped)")
    p.add_argument("--lr", type=float_above(0), default=2e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=fraction, default=0.03, help="warmup fraction")
    p.add_argument("--seed", type=int, default=0, help="data order and initialisation")
    p.add_argument("--save-every", type=int_at_least(0), default=200, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an --out that already holds a trained model, replacing it")
    p.add_argument("--eval-limit", type=int_at_least(0), default=200, help="dev sentences evaluated at the end")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads")
    from padellm_ner.train.cli import add_extra_args

    add_extra_args(p)

    p = sub.add_parser("evaluate", help="micro-F1 (paper) and span F1 on a dataset split")
    _add_model_args(p)
    p.add_argument("--dataset", help="name under shared/datasets or a folder path")
    p.add_argument("--split", default="test", help="train, dev or test")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="score only the first N sentences")
    p.add_argument("--merge", nargs="+", metavar="FILE",
                   help="combine `--json` reports of shards (--skip/--limit runs) instead of running")
    p.add_argument("--skip", type=int_at_least(0), default=0, help="skip the first N sentences (to shard a run)")
    p.add_argument("--labels", nargs="+", help="labels to ask for (default: the dataset's)")
    p.add_argument("--format", choices=["padellm", "ar_aug", "ar_struct", "onestep"], default=None,
                   help="decoding method (default: the one the model was trained for)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--dedup", choices=["string", "span", "off"], default="string",
                   help="cross-label de-duplication (see extract)")
    p.add_argument("--count-hedge", metavar="P[,P...]", default=None,
                   help="PaDeLLM: hedge counts less probable than P (see extract); several values "
                        "decode once at the highest and report each (a sweep to choose P on dev)")
    p.add_argument("--batch-sentences", type=int_at_least(1), default=8,
                   help="sentences decoded together (throughput only: scores are per sentence)")

    p = sub.add_parser("bench", help="latency and load benchmarks (tables + chart)")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    b = bsub.add_parser("latency", help="one sentence at a time, methods interleaved")
    b.add_argument("--dataset", default="conll2003", help="name under shared/datasets or a folder path")
    b.add_argument("--split", default="test", help="train, dev or test")
    b.add_argument("--limit", type=int_at_least(1), default=300, help="sentences timed")
    b.add_argument("--models", required=True, help="method=DIR[,method=DIR...] (padellm, ar_aug, ar_struct, onestep)")
    b.add_argument("--server", help="also time the padellm model through Triton at host:port")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    b.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights' dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    b.add_argument("--out", default="docs/benchmarks", help="folder for the table and chart")
    b.add_argument("--max-new-tokens", type=int_at_least(1), default=160, help="token limit of the baselines' one sequence")
    b.add_argument("--warmup", type=int_at_least(0), default=1, help="untimed passes before measuring")
    b.add_argument("--name", help="file name stem of the outputs (default: from dataset, split, N, device)")
    b = bsub.add_parser("load", help="throughput and latency percentiles, served or in process")
    where = b.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="a loopback server at host:port (gRPC)")
    where.add_argument("--model", help="in process instead: this model's engine and plan under the "
                                       "same concurrency, no Triton (what serving adds is the difference)")
    # NOTE: defaults None: with --server they are refused (the server's model decides);
    # bench.load.IN_PROCESS_DEFAULTS fills them for --model
    b.add_argument("--device", default=None, help="--model: cpu, cuda, cuda:N or auto (default)")
    b.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="--model: the weights' dtype (default auto)")
    b.add_argument("--batch-window-us", type=int_between(0, MAX_BATCH_WINDOW_US), default=None,
                   help="--model: when idle, wait this long for more requests before a step, "
                        "as served (default 5000)")
    b.add_argument("--dataset", default="conll2003", help="the test sentences sent (name or folder)")
    b.add_argument("--limit", type=int_at_least(1), default=200, help="distinct sentences, sent in turn")
    b.add_argument("--concurrency", default="1,4,16,64", help="clients in flight, one level each")
    b.add_argument("--duration", type=float_above(0), default=20.0, help="seconds per level")
    b.add_argument("--model-name", default="padellm", help="orchestrator model name on the server")
    b.add_argument("--metrics-url", help="--server: the server's metrics endpoint (e.g. "
                                         "http://127.0.0.1:8002/metrics), to report the llm model's "
                                         "batching per level")
    b.add_argument("--label", help="name of this run's row and files (default: --model-name, "
                                   "or 'in-process' with --model)")
    b.add_argument("--out", default="docs/benchmarks", help="folder for the table, chart and JSON")
    b = bsub.add_parser(
        "campaign",
        help="train every method with one recipe, score each on the test set, time them (a GPU lease)",
    )
    b.add_argument("--out", required=True, help="folder for models, reports, logs and CAMPAIGN.md")
    b.add_argument("--methods", default="padellm,ar_struct,ar_aug,onestep", help="formats to train, in order")
    b.add_argument("--dataset", default="conll2003", help="name under shared/datasets or a folder path")
    b.add_argument("--base", default="smollm2-135m", help="base model name or HF folder")
    b.add_argument("--budget-minutes", type=float_above(0), default=9.0,
                   help="wall-clock budget; rerun the same command to continue after a cut")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    b.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES,
                   help="evaluate and bench dtype (float32: scores comparable with CPU runs; bf16 "
                        "rounds the log-probs that counts and de-dup compare); training: bf16 autocast on CUDA")
    b.add_argument("--epochs", type=float_above(0), default=4.0, help="train's --epochs, every method")
    b.add_argument("--lr", type=float_above(0), default=5e-4, help="train's --lr")
    b.add_argument("--warmup", type=fraction, default=0.03, help="train's --warmup")
    b.add_argument("--batch-tokens", type=int_at_least(1), default=8192, help="train's --batch-tokens")
    b.add_argument("--micro-tokens", type=int_at_least(1), default=8192, help="train's --micro-tokens")
    b.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True,
                   help="train LoRA adapters (--no-lora: full fine-tunes)")
    b.add_argument("--seed", type=int, default=0, help="train's --seed")
    b.add_argument("--train-limit", type=int_at_least(1), default=None, help="training sentences (default: all)")
    b.add_argument("--eval-limit", type=int_at_least(1), default=None, help="test sentences scored (default: all)")
    b.add_argument("--latency-limit", type=int_at_least(1), default=100, help="test sentences timed")
    b.add_argument("--export", metavar="DIR",
                   help="afterwards, a servable copy of each trained model with its card in DIR/<method>")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    module_name, func_name = _HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except PadellmError as exc:
        print(f"padellm-ner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"padellm-ner {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
