"""Assemble a servable model repository from ``model_repository/`` templates.

    python -m padellm_build.assemble --out /tmp/repo --model smollm2-135m --labels LOC PER ORG MISC
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from padellm_build.fill_template import fill, placeholders
from padellm_ner.cli_types import device_name, hedge_threshold, int_at_least, int_between
from padellm_ner.errors import PadellmError
from padellm_ner.limits import MAX_BATCH_WINDOW_US
from padellm_ner.model_info import META_FILE, read_model_info
from padellm_ner.models import DTYPE_CHOICES
from padellm_ner.serving.loopback_tls import LoopbackTLS

__all__ = ["TEMPLATE_DIR", "DEFAULT_LABELS", "assemble_repository", "model_labels", "main"]

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_repository"
DEFAULT_LABELS = ("LOC", "PER", "ORG", "MISC")  # CoNLL-2003


def _pbtxt_string(value: str) -> str:
    """Escape a value for a double-quoted protobuf text string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def model_labels(model: str) -> tuple[list[str] | None, str | None]:
    """Labels (tags) and language recorded with a model (``padellm.json`` in its folder), if any.

    Tags, not prompt words: requests and responses speak tags (``PER.NAM``); the
    orchestrator puts the model's words for them (``人名``) into the prompts.
    """
    path = Path(model)
    if not path.is_dir():
        try:
            from padellm_ner.models import resolve_model_dir

            path = resolve_model_dir(model)
        except Exception:  # NOTE: a name that needs conversion: no record, no need to convert
            return None, None
    if not (path / META_FILE).is_file():
        return None, None
    info = read_model_info(path)
    return info.tags, info.lang


def portable_model(model: str, check: bool = True) -> str:
    """A model folder as an absolute path (tritonserver runs the models from another directory).

    Names (``default``, ``smollm2-135m``) pass through. With ``check``, anything else must be a
    model folder here, else ``ModelNotFoundError`` says so now rather than after the server
    failed to load; without it (a repository assembled for another host) the path is kept.
    """
    from padellm_ner.models import BASE_MODELS, DEFAULT_MODEL, resolve_model_dir

    if model == DEFAULT_MODEL or model in BASE_MODELS:
        return model
    if not check:
        path = Path(model).expanduser()
        return str(path.resolve()) if path.exists() else model
    return str(resolve_model_dir(model).resolve())


#: what a repository assembled here holds (the server's log lands beside the models)
_WRITTEN = frozenset({"padellm", "llm", "tensorrt_llm", "tritonserver.log"})


def _model_folder(model: str, check: bool) -> str:
    """The model's HF folder when it resolves here (a name such as ``default`` does), else
    ``model`` as given (a repository assembled for another host)."""
    if not check:
        return model
    from padellm_ner.models import resolve_model_dir

    return str(resolve_model_dir(model).resolve())


def _copy_model(name: str, out: Path, values: Mapping[str, object], template_dir: Path) -> None:
    source = template_dir / name
    if not source.is_dir():
        raise FileNotFoundError(f"model template {source} not found")
    target = out / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = target / "config.pbtxt"
    template = config.read_text()
    known = placeholders(template)
    # NOTE: fill only the keys a template has: templates written by others may differ.
    config.write_text(fill(template, {k: v for k, v in values.items() if k in known}))


def assemble_repository(
    out_dir: str | Path,
    model: str,
    labels: Sequence[str] | None = None,
    llm_backend: str = "python",
    device: str = "cpu",
    dtype: str = "float32",
    max_batch_size: int = 64,
    max_text_chars: int = 2000,
    *,
    lang: str | None = None,
    max_mentions: int | None = None,
    max_mention_tokens: int | None = None,
    max_concurrency: int | None = None,
    max_llm_inflight: int | None = None,
    llm_transport: str | None = None,
    llm_url: str | None = None,
    llm_tls: LoopbackTLS | None = None,
    batch_window_us: int | None = None,
    count_hedge: float | None = None,
    method: str | None = None,
    max_new_tokens: int | None = None,
    engine_dir: str | None = None,
    tokenizer_dir: str | None = None,
    trtllm_profile: str | None = None,
    template_dir: str | Path = TEMPLATE_DIR,
    overwrite: bool = False,
    check_model: bool = True,
) -> Path:
    """Write ``out_dir/{padellm,llm|tensorrt_llm}`` with filled configs.

    Args:
        model: model name or folder (tokenizer for both; weights for the ``python`` LLM).
        labels: default labels; ``None`` takes the model's recorded labels, else CoNLL's.
        llm_backend: ``python`` (the torch ``llm`` model) or ``tensorrtllm``.
        engine_dir: the TensorRT-LLM engine (``gpt_model_path``) for ``tensorrtllm``.
        trtllm_profile: ``a100`` or ``h100`` (build/trtllm/profiles.py): the engine's
            profile; its scheduler policy and KV-cache share go into the config, and
            ``max_batch_size`` must be the engine's. Unset: the backend's defaults.
        method: override the method recorded with the model (``padellm`` or a baseline).
        max_new_tokens: a baseline sequence's token limit (default 160).
        llm_transport: ``grpc`` (default: loopback to ``llm_url``, else the server's own
            port from ``$PADELLM_LLM_URL``, else localhost:8001) or ``bls``.
        llm_tls: the gRPC loopback's TLS, for a server whose gRPC port serves TLS.
        batch_window_us: how long the idle torch ``llm`` engine waits for more requests
            before stepping (``EngineLoop.batch_window_s``); unset: the model's 5000 (5 ms).
        count_hedge: PaDeLLM's count hedge threshold (``PlanConfig.count_hedge``); unset:
            the value recorded with the model (``padellm.json``), else 0 (off).
        max_llm_inflight: LLM requests the orchestrator keeps in flight (one thread each);
            unset: ``max_batch_size``, so the LLM's in-flight batch can fill.
        check_model: require ``model`` to be a known name or a model folder on this machine.

    Returns:
        The repository folder.
    """
    if llm_backend == "tensorrtllm" and not engine_dir:
        # NOTE: the template's gpt_model_path; without it the fill fails on a placeholder
        raise ValueError("llm_backend 'tensorrtllm' needs engine_dir, the TensorRT-LLM engine "
                         "folder (build/trtllm/README.md)")
    out = Path(out_dir)
    template_dir = Path(template_dir)
    model = portable_model(model, check_model)
    engine_dir = str(Path(engine_dir).expanduser().resolve()) if engine_dir else engine_dir
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the model repository")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (pass overwrite=True / --overwrite)")
        if not (out / "padellm" / "config.pbtxt").is_file():
            # NOTE: --overwrite replaces a repository this wrote, never any other folder
            raise FileExistsError(f"{out} is not a padellm-ner model repository; refusing to delete it")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _WRITTEN)
        if foreign:
            # NOTE: and never what a user added to one (another model, notes)
            raise FileExistsError(
                f"{out} holds more than this writes ({', '.join(foreign)}); move them out, "
                "or assemble into another folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded_labels, recorded_lang = model_labels(model)
    labels = list(labels or recorded_labels or DEFAULT_LABELS)
    site_packages = sysconfig.get_paths()["purelib"]

    if llm_backend == "python":
        llm_name, batch_dim = "llm", False
        _copy_model("llm", out, {
            "model": model, "device": device, "dtype": dtype, "max_batch_size": max_batch_size,
            "batch_window_us": batch_window_us, "python_site_packages": site_packages,
        }, template_dir)
    elif llm_backend == "tensorrtllm":
        llm_name, batch_dim = "tensorrt_llm", True
        tokenizer = tokenizer_dir or _model_folder(model, check_model)
        values: dict[str, object] = {
            "triton_max_batch_size": max_batch_size, "max_batch_size": max_batch_size,
            "engine_dir": engine_dir, "gpt_model_path": engine_dir,
            "tokenizer_dir": tokenizer, "decoupled_mode": "true",
            "batching_strategy": "inflight_fused_batching", "gpt_model_type": "inflight_fused_batching",
        }  # fmt: skip
        if trtllm_profile is not None:
            from padellm_build.trtllm.profiles import get_profile

            profile = get_profile(trtllm_profile)
            if max_batch_size != profile.max_batch_size:
                raise ValueError(
                    f"max_batch_size {max_batch_size} is not the {profile.name} engine's "
                    f"{profile.max_batch_size}; give the engine's (or no --max-batch-size)"
                )
            values.update(profile.template_values(str(engine_dir), str(tokenizer)))
        _copy_model("tensorrt_llm", out, values, template_dir)
    else:
        raise ValueError(f"llm_backend must be 'python' or 'tensorrtllm', got {llm_backend!r}")

    _copy_model("padellm", out, {
        "model": model,
        "llm_model_name": llm_name,
        "llm_batch_dim": str(batch_dim).lower(),
        "labels": _pbtxt_string(json.dumps(labels)),
        "lang": lang or recorded_lang,
        "max_text_chars": max_text_chars,
        "max_mentions": max_mentions,
        "max_mention_tokens": max_mention_tokens,
        "max_concurrency": max_concurrency,
        # NOTE: as many LLM requests in flight as the LLM batches: with 32 under a batch of
        # 64, 16 served clients kept decode batches at 14 rows instead of 19 (BENCHMARKS.md)
        "max_llm_inflight": max_llm_inflight if max_llm_inflight is not None else max_batch_size,
        "llm_transport": llm_transport,
        "llm_url": llm_url,
        **(llm_tls.params() if llm_tls else {}),
        "method": method,
        "max_new_tokens": max_new_tokens,
        "count_hedge": count_hedge,
        "python_site_packages": site_packages,
    }, template_dir)
    logger.info("assembled %s (labels %s, llm %s)", out, labels, llm_name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="repository folder to write")
    parser.add_argument("--model", default="default")
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--llm-backend", choices=["python", "tensorrtllm"], default="python")
    parser.add_argument("--device", type=device_name, default="cpu", help="the llm model's: cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    parser.add_argument("--max-batch-size", type=int_at_least(1), default=None,
                        help="sequences the LLM batches (default 64; with --trtllm-profile, the engine's)")
    parser.add_argument("--trtllm-profile", choices=["a100", "h100"],
                        help="tensorrtllm: the engine's build profile; its scheduler and KV-cache settings go into the config")
    parser.add_argument("--max-text-chars", type=int_at_least(1), default=2000)
    parser.add_argument("--max-mention-tokens", type=int_at_least(1))
    parser.add_argument("--engine-dir", help="TensorRT-LLM engine folder (tensorrtllm)")
    parser.add_argument(
        "--llm-transport", choices=["grpc", "bls"],
        help="how the orchestrator calls the LLM model (default grpc: loopback to --llm-url)",
    )
    parser.add_argument("--llm-url", help="the LLM model's gRPC address (default: $PADELLM_LLM_URL, else localhost:8001)")
    parser.add_argument("--llm-tls-root-cert", nargs="+", metavar="PEM",
                        help="the server's gRPC port serves TLS: the loopback trusts these certificates")
    parser.add_argument("--llm-tls-client-cert", metavar="PEM", help="mutual TLS: the loopback's client certificate")
    parser.add_argument("--llm-tls-client-key", metavar="PEM", help="mutual TLS: its private key")
    parser.add_argument("--llm-tls-server-name", help="verify the server's certificate against this name")
    parser.add_argument(
        "--batch-window-us", type=int_between(0, MAX_BATCH_WINDOW_US),
        help="torch llm model: wait this long when idle for more requests before a step (default 5000)",
    )
    parser.add_argument("--count-hedge", type=hedge_threshold,
                        help="PaDeLLM count hedge threshold (default: the model's recorded value, else 0)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--no-check-model", action="store_true",
        help="keep --model as given even if it is not a folder here (deploying to another host)",
    )
    args = parser.parse_args(argv)
    if args.llm_backend == "tensorrtllm" and not args.engine_dir:
        parser.error("--llm-backend tensorrtllm needs --engine-dir (the TensorRT-LLM engine folder)")
    if args.trtllm_profile and args.llm_backend != "tensorrtllm":
        parser.error("--trtllm-profile goes with --llm-backend tensorrtllm")
    if args.max_batch_size is None:
        from padellm_build.trtllm.profiles import get_profile

        args.max_batch_size = get_profile(args.trtllm_profile).max_batch_size if args.trtllm_profile else 64
    try:
        out = _assemble_from_args(args)
    except (OSError, ValueError, PadellmError) as exc:  # NOTE: TemplateError is a ValueError
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(out)
    return 0


def _loopback_tls(args: argparse.Namespace) -> LoopbackTLS | None:
    others = (args.llm_tls_client_cert, args.llm_tls_client_key, args.llm_tls_server_name)
    if not args.llm_tls_root_cert:
        if any(others):
            raise ValueError("--llm-tls-client-cert/-key and --llm-tls-server-name need --llm-tls-root-cert")
        return None
    if bool(args.llm_tls_client_cert) != bool(args.llm_tls_client_key):
        raise ValueError("--llm-tls-client-cert and --llm-tls-client-key go together")
    for path in (*args.llm_tls_root_cert, args.llm_tls_client_cert, args.llm_tls_client_key):
        if path and not Path(path).is_file():
            raise ValueError(f"{path} is not a file")
    absolute = lambda p: str(Path(p).resolve()) if p else None  # noqa: E731
    return LoopbackTLS(tuple(absolute(p) for p in args.llm_tls_root_cert), absolute(args.llm_tls_client_cert),
                       absolute(args.llm_tls_client_key), args.llm_tls_server_name)


def _assemble_from_args(args: argparse.Namespace) -> Path:
    return assemble_repository(
        args.out, args.model, args.labels, args.llm_backend, args.device, args.dtype,
        args.max_batch_size, args.max_text_chars, max_mention_tokens=args.max_mention_tokens,
        engine_dir=args.engine_dir, llm_transport=args.llm_transport, llm_url=args.llm_url, llm_tls=_loopback_tls(args),
        batch_window_us=args.batch_window_us, count_hedge=args.count_hedge, overwrite=args.overwrite, check_model=not args.no_check_model,
        trtllm_profile=args.trtllm_profile,
    )


if __name__ == "__main__":
    sys.exit(main())
