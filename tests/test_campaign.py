"""``bench campaign`` end to end on a tiny random Llama (CPU): every job is a real
``padellm-ner`` process; a rerun continues instead of redoing; a broken job costs only
the jobs that need its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from padellm_ner.bench.campaign import Recipe, plan_jobs
from padellm_ner.cli import main
from tests.model_cache import make_tiny_llama

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-campaign-base"))


def _campaign(out: Path, base: str, *extra: str) -> int:
    return main([
        "bench", "campaign", "--out", str(out), "--methods", "padellm,ar_struct",
        "--base", base, "--device", "cpu", "--dtype", "float32", "--epochs", "1",
        "--train-limit", "4", "--batch-tokens", "512", "--micro-tokens", "512",
        "--eval-limit", "2", "--latency-limit", "2", *extra,
    ])  # fmt: skip


def test_campaign_trains_scores_and_times_each_method(tiny_base: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "campaign"
    assert _campaign(out, str(tiny_base)) == 0
    summary = json.loads((out / "campaign.json").read_text())
    assert [(j["name"], j["status"]) for j in summary["jobs"]] == [
        ("train padellm", "ok"), ("evaluate padellm", "ok"),
        ("train ar_struct", "ok"), ("evaluate ar_struct", "ok"), ("bench latency", "ok"),
    ]  # fmt: skip
    for method in ("padellm", "ar_struct"):
        meta = json.loads((out / "models" / method / "padellm.json").read_text())
        assert meta["format"] == method and meta["train"]["sentences"] == {"conll2003": 4}
        report = json.loads((out / "eval" / f"{method}.json").read_text())
        assert report["num_sentences"] == 2 and 0 <= report["f1"] <= 100
    assert (out / "bench" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "CAMPAIGN.md").read_text()
    assert "| PaDeLLM | 1 |" in card and "| AutoReg_Struct | 1 |" in card
    assert "--lr 0.0005" in summary["recipe"] and "## " in card  # the latency table is inlined
    capsys.readouterr()
    from padellm_ner.bench.campaign import export_models

    (exported,) = export_models(out, tmp_path / "export", ["padellm"], "one test GPU")
    card = (exported / "MODEL_CARD.md").read_text()
    assert "padellm-ner train --format padellm" in card and "one test GPU" in card
    assert "micro" in card  # the test report, from the evaluate JSON
    assert (exported / "adapter_model.safetensors").exists() and not (exported / "tokenizer.json").exists()

    # NOTE: a rerun (the next call of a cut lease) redoes nothing that finished
    assert _campaign(out, str(tiny_base)) == 0
    again = json.loads((out / "campaign.json").read_text())
    assert {j["status"] for j in again["jobs"]} == {"done before"}


def test_a_failed_job_skips_what_needs_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "broken"
    assert _campaign(out, str(tmp_path / "no-such-base"), "--budget-minutes", "5") == 1
    jobs = {j["name"]: j for j in json.loads((out / "campaign.json").read_text())["jobs"]}
    assert jobs["train padellm"]["status"] == "failed" and "exit 2" in jobs["train padellm"]["detail"]
    assert jobs["evaluate padellm"]["status"] == "skipped"
    assert jobs["bench latency"]["status"] == "skipped"
    assert Path(jobs["train padellm"]["log"]).read_text()  # the reason is in the job's log
    assert "| train padellm | failed |" in (out / "CAMPAIGN.md").read_text()


def test_plan_puts_the_default_model_first_and_checks_methods(tmp_path: Path) -> None:
    jobs = plan_jobs(tmp_path, Recipe(), ["onestep", "ar_aug", "ar_struct", "padellm"], "cuda", None, 100)
    assert [j.name for j in jobs] == [
        "train padellm", "evaluate padellm", "train ar_struct", "evaluate ar_struct",
        "train onestep", "train ar_aug", "bench latency", "evaluate onestep", "evaluate ar_aug",
    ]  # fmt: skip
    assert "--limit" not in jobs[1].argv  # the full test set unless told otherwise
    capped = plan_jobs(tmp_path, Recipe(), ["padellm"], "cuda", 50, 100, budget_s=600)
    # a quarter of the budget, the LR schedule fitted to it
    assert capped[0].argv[-3:] == ["--max-minutes", "2.50", "--fit-schedule"]
    assert main(["bench", "campaign", "--out", str(tmp_path / "x"), "--methods", "bert"]) == 2


def test_baselines_train_as_many_epochs_as_padellm_reached(tmp_path: Path) -> None:
    """A budget that cut PaDeLLM at 1.5 of 4 epochs caps the baselines' --epochs at 1.5."""
    jobs = {j.name: j for j in plan_jobs(tmp_path, Recipe(), ["padellm", "ar_struct"], "cuda", None, 5)}
    padellm, ar_struct = jobs["train padellm"], jobs["train ar_struct"]
    assert padellm.epochs_from is None and ar_struct.epochs_from == padellm.output

    def epochs(argv: list[str]) -> str:
        return argv[argv.index("--epochs") + 1]

    assert ar_struct.resolved_argv() == (ar_struct.argv, "")  # PaDeLLM not trained yet
    padellm.output.mkdir(parents=True)
    (padellm.output / "train_result.json").write_text(json.dumps({"epochs_done": 1.5}))
    argv, note = ar_struct.resolved_argv()
    assert (epochs(ar_struct.argv), epochs(argv)) == ("4", "1.5") and "padellm" in note
    (padellm.output / "train_result.json").write_text(json.dumps({"epochs_done": 4.0}))
    assert ar_struct.resolved_argv() == (ar_struct.argv, "")  # the full recipe: unchanged
