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
    (["serve", "--batch-window-us", "-5"], "--batch-window-us: must be at least 0"),
    (["train", "--dataset", "conll2003", "--out", "o", "--warmup", "1.5"], "--warmup: must be between 0 and 1"),
    (["train", "--dataset", "conll2003", "--out", "o", "--lr", "0"], "--lr: must be greater than 0"),
    (["train", "--dataset", "conll2003", "--out", "o", "--epochs", "nan"], "--epochs: must be greater than 0"),
    (["train", "--dataset", "conll2003", "--out", "o", "--zero-count-keep", "2"], "--zero-count-keep: must be between 0 and 1"),
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
