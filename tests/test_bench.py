"""bench latency / load: end to end on a tiny random Llama, and the pieces on fakes (fast)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from padellm_ner.bench import latency, load, report
from padellm_ner.cli import main
from padellm_ner.errors import InvalidInputError
from padellm_ner.llm import GenerationRequest, GenerationResult
from padellm_ner.types import Entity, Example
from tests.model_cache import make_tiny_llama

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 random LlamaForCausalLM with the real SmolLM2 tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_bench_latency_end_to_end(tiny_model: Path, tmp_path: Path, capsys) -> None:
    models = ",".join(f"{m}={tiny_model}" for m in ("padellm", "ar_struct", "ar_aug", "onestep"))
    out = tmp_path / "bench"
    rc = main(
        [
            "bench",
            "latency",
            "--dataset",
            "conll2003",
            "--split",
            "test",
            "--limit",
            "3",
            "--models",
            models,
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--out",
            str(out),
            "--name",
            "tiny",
        ]
    )
    assert rc == 0
    md_files = list(out.glob("*.md"))
    assert [f.name for f in md_files] == ["tiny.md"]
    md = md_files[0].read_text()
    for key in ("Machine", "torch", "Commit", "Date", "Command", "Models"):
        assert f"**{key}**" in md
    assert "--warmup 1" in md and "--name tiny" in md  # the command reproduces these files
    rows = _table_rows(md)
    assert rows[0] == latency.COLUMNS
    names = [row[0] for row in rows[2:]]
    assert names == [
        "PaDeLLM (Batch)",
        "PaDeLLM (Multi)",
        "AutoReg_Struct",
        "AutoReg_Aug",
        "OneStep",
    ]
    batch = rows[2]
    assert batch[3] == "1.00x" and batch[9] == "1.00x" and batch[10] == "1.00"
    assert float(batch[11]) >= 2 and batch[12] == "1.00x"  # a prefill and a decode at least
    for row in rows[2:]:
        assert float(row[1]) > 0 and float(row[2]) > 0  # mean, median ms
        assert 0 <= float(row[4]) <= 100 and 0 <= float(row[5]) <= 100  # F1, span F1

    png = md_files[0].with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3

    raw = json.loads(md_files[0].with_suffix(".json").read_text())
    assert len(raw["sentences"]) == 3
    assert set(raw["sentences"][0]["runs"]) == {
        "padellm",
        "padellm_multi",
        "ar_struct",
        "ar_aug",
        "onestep",
    }
    run = raw["sentences"][0]["runs"]["padellm"]
    assert run["ms"] > 0 and run["num_sequences"] >= 4 and run["num_forwards"] >= 1
    assert [s["key"] for s in raw["summary"]][0] == "padellm"
    assert "PaDeLLM (Batch)" in capsys.readouterr().out


def test_timed_runs_start_with_a_cold_prefix_cache(tiny_model: Path) -> None:
    """The same sentence twice: the second Batch run must not reuse the prefix KV the
    first left in the shared engine (it would skip the prefix forward and look faster)."""
    extractors = latency.load_extractors({"padellm": str(tiny_model)}, device="cpu", dtype="float32")
    text = "Peter Blackburn of the European Commission spoke in Brussels on Thursday ."
    examples = [Example(text, []), Example(text, [])]
    result = latency.run_latency(extractors, examples, ["PER", "ORG"], "en", num_warmup=1)
    core = extractors["padellm"].llm.core
    # NOTE: the random model counts 0 for every label (no mention phase), so any hit
    # would be a run reusing the prefix of the warm-up or of the run before it
    assert core.stats.num_prompt_tokens_shared > 0 and core.stats.num_prefix_cache_hits == 0
    batch = [run.num_forwards for run in result.runs["padellm"]]
    multi = [run.num_forwards for run in result.runs["padellm_multi"]]
    assert batch[0] == batch[1] and multi[0] == multi[1]
    assert batch[0] >= 2 and multi[0] >= 1


def test_critical_path_forwards() -> None:
    counter = iter(range(0, 100, 3))  # every generate call costs 3 forwards
    serial = latency.TimingLLM(_SleepLLM(), serial=True, count_forwards=lambda: next(counter))
    a, b = GenerationRequest((1, 2, 3), 4), GenerationRequest((1, 2, 4), 4)
    serial.generate([a, b])
    serial.generate([GenerationRequest((1, 2, 3, 9), 8)])
    # NOTE: each call reads the counter twice (before, after): 3 forwards per request
    assert serial.critical_path_forwards() == 3 + 3  # label a: its count, then its mention
    batch = latency.TimingLLM(_SleepLLM(), count_forwards=lambda: next(counter))
    batch.generate([a, b])
    batch.generate([a])
    assert batch.critical_path_forwards() == 6
    assert latency.TimingLLM(_SleepLLM()).critical_path_forwards() == 0  # no calls yet
    uncounted = latency.TimingLLM(_SleepLLM())
    uncounted.generate([a])
    assert uncounted.critical_path_forwards() is None


class _SleepLLM:
    """Fake LLM: records batch sizes and returns one token per request."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate(self, requests):
        self.batches.append(len(requests))
        return [GenerationResult([7], [0.0], "stop") for _ in requests]


def test_timing_llm_serial_and_batch() -> None:
    inner = _SleepLLM()
    reqs = [GenerationRequest((1, 2), 4), GenerationRequest((1, 3), 4)]
    batch = latency.TimingLLM(inner)
    assert len(batch.generate(reqs)) == 2 and inner.batches == [2]
    assert batch.calls[0][0].request is None and batch.total_seconds >= 0
    serial = latency.TimingLLM(inner, serial=True)
    serial.generate(reqs)
    assert inner.batches == [2, 1, 1]
    assert [t.request for t in serial.calls[0]] == reqs


def test_multi_latency_is_slowest_branch() -> None:
    a, b = GenerationRequest((1, 2, 3), 4), GenerationRequest((1, 2, 4), 4)
    counts = [(a, 1.0), (b, 2.0)]
    mentions = [
        (GenerationRequest((1, 2, 3, 9), 8), 5.0),  # label a: 1 + 5 = 6
        (GenerationRequest((1, 2, 3, 8), 8), 3.0),
        (GenerationRequest((1, 2, 4, 9), 8), 3.5),  # label b: 2 + 3.5 = 5.5
    ]
    assert latency.multi_latency([counts, mentions]) == pytest.approx(6.0)
    assert latency.multi_latency([counts]) == pytest.approx(2.0)
    assert latency.multi_latency([]) == 0.0


def test_parse_models() -> None:
    assert latency.parse_models("padellm=a, ar_aug=b") == {"padellm": "a", "ar_aug": "b"}
    for bad in ("", "padellm", "gpt=x", "padellm=a,padellm=b", "padellm="):
        with pytest.raises(InvalidInputError):
            latency.parse_models(bad)


def test_summarize_ratios_and_served_overhead() -> None:
    gold = [Entity("LOC", "Paris", 0, 5)]
    examples = [Example("Paris is big .", gold, id="t:0")]
    result = latency.LatencyResult(
        examples,
        {
            "padellm": [latency.SentenceRun(10.0, gold, 8, 5, 4)],
            "ar_struct": [latency.SentenceRun(30.0, [], 12, 1, 12)],
            "padellm_served": [latency.SentenceRun(14.0, gold)],
        },
    )
    rows = {row.key: row for row in latency.summarize(result)}
    assert rows["padellm"].f1 == pytest.approx(100.0)
    assert rows["ar_struct"].vs_batch == pytest.approx(3.0)
    assert rows["ar_struct"].step_bound == pytest.approx(3.0)
    assert rows["ar_struct"].achieved_of_bound == pytest.approx(1.0)
    assert rows["padellm"].tokens_per_sequence == pytest.approx(1.6)
    table = latency.latency_table(list(rows.values()), 1)
    assert any("overhead" in note and "4.00 ms" in note for note in table.notes)
    assert table.rows[2][0] == "PaDeLLM (served)" and table.rows[2][6] == "-"


def test_run_latency_with_served_callable() -> None:
    seen: list[str] = []

    def served(text: str) -> list[Entity]:
        seen.append(text)
        return []

    examples = [Example("a b ."), Example("c d .")]
    result = latency.run_latency({}, examples, ["LOC"], "en", served=served, num_warmup=1)
    assert seen == ["a b .", "a b .", "c d ."]  # warm-up, then one per sentence
    assert len(result.runs["padellm_served"]) == 2


def test_check_loopback_and_concurrency() -> None:
    for ok in ("127.0.0.1:8001", "localhost:8001", "[::1]:8001", "127.0.0.2:9"):
        load.check_loopback(ok)
    for bad in ("10.0.0.1:8001", "example.com:8001", "127.0.0.1"):
        with pytest.raises(InvalidInputError):
            load.check_loopback(bad)
    assert load.parse_concurrency("1,4, 16") == [1, 4, 16]
    for bad in ("", "0,1", "a"):
        with pytest.raises(InvalidInputError):
            load.parse_concurrency(bad)


def test_load_levels_with_fake_client(tmp_path: Path) -> None:
    calls = 0

    async def extract(text: str) -> list:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.002)
        if calls % 10 == 0:
            raise TimeoutError("slow")
        return []

    ticks = {k: 0.0 for k in load.ENGINE_COUNTERS}

    def counters() -> dict[str, float]:  # an engine that did 3 forwards per call so far
        ticks.update(num_forwards=3.0 * calls, num_decode_steps=2.0 * calls,
                     sum_batch_size=5.0 * calls, num_prompt_tokens_computed=6.0 * calls,
                     num_prefill_slots=8.0 * calls)  # fmt: skip
        return dict(ticks)

    results = asyncio.run(
        load.run_load(extract, ["x", "y"], [1, 4], duration_s=0.1, label="fake", max_requests=50,
                      counters=counters)  # fmt: skip
    )
    assert [r.concurrency for r in results] == [1, 4]
    for r in results:  # the level's share of the counters, per answered sentence
        calls_in_level = r.num_ok + r.num_errors
        assert r.engine["num_forwards"] == 3.0 * calls_in_level
        e = r.engine_summary()
        assert e["forwards_per_sentence"] == 3.0 * calls_in_level / r.num_ok
        assert e["rows_per_decode_step"] == 2.5 and e["prefill_padding"] == 0.25
    for r in results:
        assert 0 < r.num_ok + r.num_errors <= 50 + r.concurrency
        assert r.throughput > 0 and r.percentile(50) <= r.percentile(99)
    assert sum(r.errors.get("TimeoutError", 0) for r in results) >= 1

    machine = report.machine_info("cpu")
    paths = load.write_load_report(tmp_path, "fake", results, machine, "padellm-ner bench load")
    assert paths["chart"].read_bytes()[:8] == PNG_MAGIC
    rows = _table_rows(paths["markdown"].read_text())
    assert [row[1] for row in rows[2:]] == ["1", "4"]
    assert rows[0][-3:] == ["forwards/sentence", "rows/decode step", "prefill padding"]
    assert [row[-2:] for row in rows[2:]] == [["2.5", "25%"]] * 2
    paths = load.write_load_report(tmp_path, "other", results[:1], machine, "cmd")
    assert "compare_markdown" in paths
    assert {row[0] for row in _table_rows(paths["compare_markdown"].read_text())[2:]} == {
        "fake",
        "other",
    }


def test_bench_load_in_process_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """``bench load --model``: the workers call the model in process (no server), and the
    run writes the same table, chart and JSON as a served run."""
    out = tmp_path / "load"
    args = ["bench", "load", "--model", str(tiny_model), "--device", "cpu", "--dtype", "float32",
            "--concurrency", "1,3", "--duration", "0.5", "--limit", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = _table_rows((out / "load_in-process.md").read_text())
    assert [row[:2] for row in rows[2:]] == [["in-process", "1"], ["in-process", "3"]]
    assert all(int(row[2]) > 0 and row[3] == "0" for row in rows[2:])  # answers, no errors
    # the engine's own counters per level: alone, a PaDeLLM sentence is a prefill and
    # decode steps; with 3 at once, forwards are shared
    assert float(rows[2][-3]) >= 2 and all(float(row[-2]) >= 1 for row in rows[2:])
    assert float(rows[3][-3]) > 0
    assert (out / "load_in-process.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((out / "load_in-process.json").read_text())
    assert "--model" in data["command"] and "--server" not in data["command"]
    for where in ([], ["--server", "127.0.0.1:8001", "--model", str(tiny_model)]):
        with pytest.raises(SystemExit) as exc:  # one of the two, and only one
            main(["bench", "load", *where, "--concurrency", "1"])
        assert exc.value.code == 2


def test_bench_commit_is_marked_dirty(tmp_path: Path, monkeypatch) -> None:
    """A report names the code it measured: an edited tracked file makes the commit ``-dirty``."""
    import subprocess

    def git(*cmd: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd],
                       cwd=tmp_path, check=True, capture_output=True)  # fmt: skip

    (tmp_path / "f.txt").write_text("a")
    git("init", "-q")
    git("add", "f.txt")
    git("commit", "-qm", "one")
    monkeypatch.setattr(report, "_REPO_ROOT", tmp_path)
    clean = report._git_commit()
    assert clean != "unknown" and not clean.endswith("-dirty")
    (tmp_path / "untracked.md").write_text("x")  # e.g. this run's own output files
    assert report._git_commit() == clean
    (tmp_path / "f.txt").write_text("b")
    assert report._git_commit() == clean + "-dirty"


def test_a_trained_model_under_another_methods_key_is_warned_about(capsys) -> None:
    """``--models ar_struct=default`` decodes the PaDeLLM-trained default in AutoReg_Struct
    prompts (near-zero F1); allowed, as an untrained base stands in for every method in
    tests, but said on stderr."""
    extractors = latency.load_extractors({"ar_struct": "default", "padellm": "default"}, "cpu", "float32")
    assert set(extractors) == {"ar_struct", "padellm"}
    err = capsys.readouterr().err
    assert "--models ar_struct=default: that model was trained for padellm" in err
    assert "padellm=default" not in err


def test_prometheus_text_is_read_by_name_and_labels() -> None:
    """The one reader of the metrics port (bench load's counters, serve's drain): sums
    over label sets, filters by labels, and an absent metric is None, not 0."""
    from padellm_ner.prom_text import metric_sum, parse_samples

    text = """# HELP padellm_requests_in_flight Extractions being answered
# TYPE padellm_requests_in_flight gauge
padellm_requests_in_flight{model="padellm"} 3
nv_inference_pending_request_count{model="padellm",version="1"} 0
nv_inference_pending_request_count{model="llm",version="1"} 2
padellm_llm_forwards_total{model="llm"} 1.5e+03
weird_label{path="a\\"b,c=d"} 7
not a sample line
"""
    samples = list(parse_samples(text))
    assert ("weird_label", {"path": 'a\\"b,c=d'}, 7.0) in samples
    assert metric_sum(samples, "padellm_requests_in_flight", model="padellm") == 3
    assert metric_sum(samples, "nv_inference_pending_request_count") == 2
    assert metric_sum(samples, "nv_inference_pending_request_count", model="padellm") == 0
    assert metric_sum(samples, "padellm_llm_forwards_total") == 1500
    assert metric_sum(samples, "padellm_requests_in_flight", model="llm") is None
