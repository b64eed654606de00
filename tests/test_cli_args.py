"""Numbers out of range are usage errors (exit 2, one line naming the option), not work
that starts and fails later or silently does something else (``--limit -3`` used to
evaluate all but the last three test sentences)."""

from __future__ import annotations

import pytest

from padellm_ner.cli import build_parser, main

BAD = [
    (["evaluate", "--dataset", "conll2003", "--limit", "-3"], "--limit: must be at least 1, got -3"),
    (["evaluate", "--dataset", "conll2003", "--skip", "-1"], "--skip: must be at least 0"),
    (["evaluate", "--dataset", "conll2003", "--batch-sentences", "0"], "--batch-sentences: must be at least 1"),
    (["extract", "x", "--timeout", "0"], "--timeout: must be greater than 0, got 0"),
    (["extract", "x", "--max-mentions", "0"], "--max-mentions: must be at least 1"),
    (["extract", "x", "--max-batch-size", "two"], "--max-batch-size: 'two' is not a whole number"),
    (["serve", "--grpc-port", "70000"], "--grpc-port: must be a port between 1 and 65535"),
    (["serve", "--batch-window-us", "-5"], "--batch-window-us: must be between 0 and 10000000"),
    (["bench", "load", "--model", "default", "--batch-window-us", "100000000000"], "--batch-window-us: must be between 0 and 10000000"),
    (["train", "--dataset", "conll2003", "--out", "o", "--warmup", "1.5"], "--warmup: must be between 0 and 1"),
    (["train", "--dataset", "conll2003", "--out", "o", "--lr", "0"], "--lr: must be greater than 0"),
    (["train", "--dataset", "conll2003", "--out", "o", "--epochs", "nan"], "--epochs: must be greater than 0"),
    (["train", "--dataset", "conll2003", "--out", "o", "--zero-count-keep", "2"], "--zero-count-keep: must be greater than 0 and at most 1"),
    (["train", "--dataset", "conll2003", "--out", "o", "--zero-count-keep", "0"], "--zero-count-keep: must be greater than 0 and at most 1"),
    (["train", "--dataset", "conll2003", "--out", "o", "--micro-tokens", "0"], "--micro-tokens: must be at least 1"),
    (["bench", "latency", "--models", "padellm=default", "--limit", "0"], "--limit: must be at least 1"),
    (["bench", "load", "--model", "default", "--duration", "-1"], "--duration: must be greater than 0"),
    (["bench", "campaign", "--out", "o", "--budget-minutes", "0"], "--budget-minutes: must be greater than 0"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a[:2]) + " " + m.split(":")[0] for a, m in BAD])
def test_out_of_range_numbers_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.rstrip().endswith("--help)"), err  # not 15 lines of usage


def test_help_shows_the_defaults(capsys) -> None:
    """What an option does when not given is in ``--help``, never as 'None'."""
    for argv, shown in ((["serve"], ["(default: 8001)", "(default: 127.0.0.1)", "(default: auto)"]),
                        (["extract"], ["(default: 16)", "(default: string)", "(default: 64)", "(default: 60.0)"]),
                        (["bench", "load"], ["(default: 1,4,16,64)", "(default: 20.0)"]),
                        (["train"], ["(default: 16)", "(default: 0.0002)", "(default: padellm)"])):  # fmt: skip
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # NOTE: unwrap argparse's columns
        assert all(text in out for text in shown), (argv, out)
        assert "(default: None)" not in out and "(default: False)" not in out


def test_bounds_keep_the_values_in_use() -> None:
    """The edges the project's own commands pass (the campaign's ``--save-every 0
    --eval-limit 0``, a zero batching window) still parse."""
    args = build_parser().parse_args(
        ["train", "--dataset", "conll2003", "--out", "o", "--save-every", "0", "--eval-limit", "0",
         "--warmup", "0", "--zero-count-keep", "1", "--skip", "0", "--max-minutes", "8.5"]
    )
    assert (args.save_every, args.eval_limit, args.warmup, args.max_minutes) == (0, 0, 0.0, 8.5)
    args = build_parser().parse_args(["serve", "--batch-window-us", "0", "--grpc-port", "65535"])
    assert (args.batch_window_us, args.grpc_port) == (0, 65535)


ASSEMBLE_BAD = [
    (["--count-hedge", "5"], "--count-hedge is 5; it must be between 0 and 1"),
    (["--max-batch-size", "0"], "--max-batch-size: must be at least 1, got 0"),
    (["--max-text-chars", "-1"], "--max-text-chars: must be at least 1"),
    (["--max-mention-tokens", "0"], "--max-mention-tokens: must be at least 1"),
    (["--dtype", "foo"], "invalid choice: 'foo'"),
    (["--device", "bar"], "'bar' is not a device: use cpu, cuda, cuda:N or auto"),
]


@pytest.mark.parametrize(("extra", "message"), ASSEMBLE_BAD, ids=[a[0] for a, _ in ASSEMBLE_BAD])
def test_assemble_refuses_what_the_served_models_could_not_use(extra, message, tmp_path, capsys) -> None:
    """``python -m padellm_build.assemble`` wrote these into the configs and exited 0
    (``max_batch_size "0"``, ``count_hedge "5.0"``, a device no torch knows)."""
    from padellm_build.assemble import main as assemble_main

    out = tmp_path / "repo"
    with pytest.raises(SystemExit) as exit_info:
        assemble_main(["--out", str(out), "--model", "/x", "--no-check-model", *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
    # a repository for a GPU host can still be written here
    assert assemble_main(["--out", str(out), "--model", "/x", "--no-check-model", "--device", "cuda:1",
                          "--dtype", "auto", "--count-hedge", "0.5"]) == 0  # fmt: skip


def test_unknown_dtype_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "x", "--dtype", "foo"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'foo'" in capsys.readouterr().err


def test_devices_torch_cannot_use_are_clear_errors(capsys) -> None:
    """``--device cuda`` on a CPU-only torch used to end in torch's AssertionError
    ("Torch not compiled with CUDA enabled") once the model moved; ``serve`` started
    tritonserver and let the llm model fail to load."""
    import torch

    from padellm_ner.errors import InvalidInputError
    from padellm_ner.models import pick_device

    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cpu", "cuda")
    with pytest.raises(InvalidInputError, match="'gpu' is not a device"):
        pick_device("gpu")
    if torch.cuda.is_available():  # NOTE: on the GPU machine: a device number out of range
        with pytest.raises(InvalidInputError, match="numbered from 0"):
            pick_device(f"cuda:{torch.cuda.device_count()}")
        return
    for argv in (["extract", "x", "--device", "cuda"], ["serve", "--device", "cuda:0"],
                 ["train", "--dataset", "conll2003", "--out", "o", "--device", "cuda", "--limit", "1"]):
        assert main(argv) == 2, argv
        assert "sees no CUDA GPU; use --device cpu or auto" in capsys.readouterr().err


def test_train_inputs_are_checked_before_anything_loads(tmp_path, capsys) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    untagged = tmp_path / "untagged"
    untagged.mkdir()
    (untagged / "train.txt").write_text("hello O\nworld O\n")  # CoNLL without an entity
    newline_word, same_words = tmp_path / "newline.json", tmp_path / "same.json"
    newline_word.write_text('{"PER": "per\\nson", "LOC": "LOC"}')
    same_words.write_text('{"PER": "X", "LOC": "X"}')
    typo = tmp_path / "typo.json"
    typo.write_text('{"PER": "person", "LCO": "location"}')
    cases = [
        (["--out", str(tmp_path / "o"), "--labels-file", str(typo)], "--labels-file names tags no --dataset has: LCO"),
        (["--out", str(tmp_path / "o"), "--dataset", "conll2003,resume"], "--dataset mixes languages (conll2003: en, resume: zh)"),
        (["--out", str(tmp_path / "o"), "--labels-file", str(newline_word)],
         "label word[0] contains the control character '\\n'"),
        (["--out", str(tmp_path / "o"), "--labels-file", str(same_words)],
         "PER and LOC have the same label words 'X'"),
        (["--out", str(tmp_path / "o"), "--dataset", str(untagged)], "tags no entity in any split"),
        (["--out", str(a_file)], "is a file; give a folder"),
        (["--out", str(tmp_path / "o"), "--init-adapter", str(tmp_path)], "is not a LoRA adapter folder"),
        (["--out", str(tmp_path / "o"), "--init-adapter", "padellm_ner/assets/default-adapter", "--base", "gemma3-270m"],
         "was trained on smollm2-135m, not on --base gemma3-270m"),
        (["--out", str(tmp_path / "o"), "--init-adapter", "padellm_ner/assets/default-adapter", "--no-lora"],
         "does not go with --no-lora"),
    ]  # fmt: skip
    for extra, message in cases:
        assert main(["train", "--dataset", "conll2003", *extra]) == 2, extra  # NOTE: a later --dataset wins
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_output_folder_is_checked_before_the_run(tmp_path, capsys) -> None:
    """``bench latency --out FILE`` used to time every sentence, then fail writing the
    table (FileExistsError); now nothing runs."""
    a_file = tmp_path / "results"
    a_file.write_text("x")
    for argv in (
        ["bench", "latency", "--models", "padellm=default", "--out", str(a_file)],
        ["bench", "load", "--model", "default", "--out", str(a_file / "sub")],
        ["bench", "campaign", "--out", str(a_file)],
        ["bench", "campaign", "--out", str(tmp_path / "c"), "--export", str(a_file)],
    ):
        assert main(argv) == 2, argv
        assert "a file is in the way; give a folder" in capsys.readouterr().err
    assert main(["bench", "load", "--model", "default", "--metrics-url", "http://127.0.0.1:8002/metrics",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--metrics-url reads a server's counters" in capsys.readouterr().err
    # and the in-process settings the other way round: a server's model has its own
    assert main(["bench", "load", "--server", "127.0.0.1:8001", "--dtype", "float32",
                 "--batch-window-us", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--dtype, --batch-window-us: options of an in-process run (--model)" in capsys.readouterr().err


def test_serve_with_tensorrtllm_says_what_it_needs(tmp_path, capsys) -> None:
    """The tritonserver of nvidia-pytriton has no tensorrtllm backend (a fact of this
    machine, checked, not faked); ``serve`` used to die in the template fill with a
    TemplateError traceback (no engine_dir)."""
    from padellm_build.assemble import assemble_repository

    assert main(["serve", "--llm-backend", "tensorrtllm"]) == 2
    assert "needs --engine-dir" in capsys.readouterr().err
    assert main(["serve", "--llm-backend", "tensorrtllm", "--engine-dir", str(tmp_path)]) == 2
    assert "has no tensorrtllm backend" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs engine_dir"):
        assemble_repository(tmp_path / "repo", "default", llm_backend="tensorrtllm")


def test_train_does_not_replace_a_trained_model_unless_told(tmp_path, capsys) -> None:
    """A rerun of the same command used to overwrite the finished adapter in --out."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"hours of training")
    assert main(["train", "--dataset", "conll2003", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a trained model (adapter_model.safetensors)" in err and "--overwrite" in err
    assert (out / "adapter_model.safetensors").read_bytes() == b"hours of training"
