"""``padellm-ner extract``: JSONL jobs resume, bad input is a clear error (real SmolLM2 base)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from padellm_ner.extract import JsonlJob, process_jsonl
from padellm_ner.extraction import Extractor
from padellm_ner.types import Entity
from tests.model_cache import smollm2_codec, smollm2_core


@pytest.fixture(scope="module")
def extract_fn():
    """What ``extract --input`` calls: several texts with the same labels, one engine run."""
    from padellm_ner.engine import TorchLLM

    extractor = Extractor(TorchLLM(smollm2_core()), smollm2_codec())
    calls: list[list[str]] = []

    def extract(texts: list[str], labels) -> list[list[Entity]]:
        calls.append(list(texts))
        return [o.entities for o in extractor.extract_batch(texts, labels)]

    extract.calls = calls
    return extract


LINES = [
    json.dumps({"id": "a", "text": "EU rejects German call to boycott British lamb ."}),
    "not json",
    json.dumps({"text": "   "}),
    json.dumps({"id": 7, "text": "Peter Blackburn", "labels": ["PER"]}),
    json.dumps("BRUSSELS 1996-08-22"),
    json.dumps({"text": "Peter Blackburn", "labels": "PER"}),
]


def test_jsonl_every_line_answered_and_rerun_resumes(tmp_path: Path, extract_fn) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(LINES) + "\n")
    out = tmp_path / "out.jsonl"
    done, errors = process_jsonl(JsonlJob.open(src, out), extract_fn, progress=False)
    assert (done, errors) == (6, 3)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 6
    assert "must be a list of strings" in records[5]["error"]
    assert records[0]["id"] == "a" and "entities" in records[0]
    assert "invalid JSON" in records[1]["error"]
    assert "text is empty" in records[2]["error"]
    assert records[3]["id"] == 7
    # simulate a run killed while writing line 4: three whole lines and a torn fourth
    first_three = "\n".join(out.read_text().splitlines()[:3]) + "\n" + '{"id": 7, "te'
    out.write_text(first_three)
    calls_before = len(extract_fn.calls)
    done, _ = process_jsonl(JsonlJob.open(src, out), extract_fn, progress=False)
    assert done == 3  # the torn line is redone, nothing before it
    assert extract_fn.calls[calls_before:] == [["Peter Blackburn"], ["BRUSSELS 1996-08-22"]]
    assert [json.loads(x) for x in out.read_text().splitlines()] == records


def test_jsonl_lines_end_at_newlines_only_and_odd_lines_get_their_own_error(
    tmp_path: Path, extract_fn
) -> None:
    """A BOM, a raw U+2028/U+0085 inside a string (our own output writes them raw), a lone
    surrogate, and ``"labels": []``: one output line per input line, errors on their line."""
    lines = [
        json.dumps({"id": "sep", "text": "Japan\u2028beat Korea\u0085."}, ensure_ascii=False),
        json.dumps({"id": "surrogate", "text": "\ud800 Korea"}),  # json escapes it: valid JSON
        json.dumps({"id": "nolabels", "text": "Japan .", "labels": []}),
        json.dumps({"id": "falsy", "text": "Japan .", "labels": ""}),
        json.dumps({"id": "ok", "text": "Japan beat Korea ."}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\r\n", encoding="utf-8-sig")
    out = tmp_path / "out.jsonl"
    done, errors = process_jsonl(JsonlJob.open(src, out), extract_fn, progress=False)
    records = [json.loads(x) for x in out.read_bytes().decode().split("\n")[:-1]]
    assert (done, errors, len(records)) == (5, 3, 5)
    assert [r["id"] for r in records] == ["sep", "surrogate", "nolabels", "falsy", "ok"]
    assert records[0]["text"] == "Japan\u2028beat Korea\u0085." and "entities" in records[0]
    assert "line 2: text is not valid Unicode" in records[1]["error"]
    assert "line 3: labels is empty" in records[2]["error"]
    assert "line 4:" in records[3]["error"] and "must be a list" in records[3]["error"]
    assert "entities" in records[4]
    assert JsonlJob.open(src, out).done == 5  # and the rerun finds them all done


def test_jsonl_output_to_a_pipe_is_written_not_resumed(tmp_path: Path, extract_fn) -> None:
    """``--output /dev/stdout | ...``: a pipe cannot be read back for resuming (it used to
    block there forever); the lines are written to it."""
    import os

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps("Japan beat Korea .") + "\n")
    read_end, write_end = os.pipe()  # NOTE: we hold the write end, as a shell's | does
    try:
        job = JsonlJob.open(src, Path(f"/proc/self/fd/{write_end}"))  # what /dev/stdout is
        assert job.done == 0
        process_jsonl(job, extract_fn, progress=False)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        records = [json.loads(x) for x in pipe.read().decode().splitlines()]
    assert [r["text"] for r in records] == ["Japan beat Korea ."]


def test_jsonl_batches_give_the_lines_of_one_at_a_time(tmp_path: Path, extract_fn) -> None:
    """``--batch-sentences``: lines with the same labels go in one call, the output is
    line for line the same, and a text the model refuses (too long) spoils only its line."""
    src = tmp_path / "in.jsonl"
    too_long = json.dumps({"id": "long", "text": "word " * 9000})
    src.write_text("\n".join([*LINES, too_long, json.dumps("Japan beat Korea .")]) + "\n")
    alone, batched = tmp_path / "alone.jsonl", tmp_path / "batched.jsonl"
    process_jsonl(JsonlJob.open(src, alone), extract_fn, progress=False, batch=1)
    calls_before = len(extract_fn.calls)
    done, errors = process_jsonl(JsonlJob.open(src, batched), extract_fn, progress=False, batch=8)
    assert (done, errors) == (8, 4)
    def lines(path: Path) -> list[dict]:
        """The records, an error without the engine's request id it names, scores to 4
        places (a batch pads differently: the float sums differ in the last digits)."""
        records = [json.loads(x) for x in path.read_text().splitlines()]
        for r in records:
            if "error" in r:
                r["error"] = r["error"].split(" (request")[0]
            for e in r.get("entities", []):
                e["score"] = round(e["score"], 4)
        return records

    assert lines(batched) == lines(alone)
    assert "text too long" in json.loads(batched.read_text().splitlines()[6])["error"]
    # one call per label set in the batch; the refused call is redone line by line
    sizes = [len(texts) for texts in extract_fn.calls[calls_before:]]
    assert sizes[:2] == [4, 1] and sorted(sizes[2:]) == [1, 1, 1, 1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "padellm_ner.cli", "extract", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "text is empty"),
        ([], "either a TEXT argument or --input"),
        (["--input", "missing.jsonl", "--output", "o.jsonl"], "does not exist"),
        (["--input", "x.jsonl"], "--input needs --output"),
        (["Japan .", "--labels", "PER", "LOC\nORG"], "--labels[1] contains the control character '\\n'"),
        (["Japan .", "--labels", "PER", " "], "--labels[1] is empty"),
        (["--input", "latin1.jsonl", "--output", "o.jsonl"], "cannot read --input latin1.jsonl"),
        (["--input", "short.jsonl", "--output", "long.jsonl"], "is --output from another input?"),
        (["--input", "short.jsonl", "--output", "./short.jsonl"], "is the --input file"),
        (["--input", "short.jsonl", "--output", "short.jsonl/o.jsonl"], "cannot write --output short.jsonl/o.jsonl"),
        (["Japan .", "--count-hedge", "1.5"], "--count-hedge is 1.5"),
        (["Japan .", "--count-hedge", "0.5", "--server", "127.0.0.1:1"], "the server's setting"),
        (["Japan .", "--server", "127.0.0.1:1", "--tls-server-name", "svc"], "--tls-server-name go with --server and --root-cert"),
        (["Japan .", "--server", "127.0.0.1:1", "--root-cert", "short.jsonl", "--client-cert", "short.jsonl"],
         "--client-cert and --client-key go together"),
        (["Japan .", "--server", "127.0.0.1:1", "--root-cert", "missing.pem"], "root_certificates file not found"),
        (["Japan \udcff ."], "text is not valid Unicode at character 6"),
        (["Japan .", "--server", ""], "--server is empty"),
        (["Japan .", "--server", "127.0.0.1:1", "--model", "x", "--dtype", "float32"],
         "--model, --dtype: the server's model decides"),
        (["Japan .", "--server", "127.0.0.1:1", "--lang", "zh"], "--lang is the served model's setting"),
        (["--input", ".", "--output", "o.jsonl"], "is a folder, not a JSONL file"),
        (["Japan .", "--labels", "PER\u2028LOC"], "--labels[0] contains the control character"),
    ],
)
def test_cli_bad_input_is_a_clear_error(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "Köln"}\n'.encode("latin-1"))
    (tmp_path / "short.jsonl").write_text('{"text": "Japan ."}\n')
    (tmp_path / "long.jsonl").write_text('{"id": 0}\n{"id": 1}\n')
    proc = _cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    # NOTE: refused before the model loads: no note about which model would have run
    assert "note: " not in proc.stderr


def test_cli_text_too_long_for_the_model_is_a_clear_error(tmp_path: Path) -> None:
    from tests.model_cache import make_tiny_llama

    tiny = make_tiny_llama(tmp_path / "tiny", max_position_embeddings=128)
    proc = _cli("word " * 200, "--model", str(tiny), "--device", "cpu", "--labels", "LOC")
    assert proc.returncode == 2, proc.stderr
    assert "text too long for this model" in proc.stderr and "128 positions" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_extract_json_output_has_offsets() -> None:
    text = "Japan beat Korea in Tokyo ."
    proc = _cli(text, "--model", "smollm2-135m", "--json", "--labels", "LOC")
    assert proc.returncode == 0, proc.stderr
    entities = json.loads(proc.stdout)
    assert isinstance(entities, list)
    for e in entities:  # the untrained base may find nothing; what it finds is grounded right
        assert set(e) == {"label", "text", "start", "end", "score"}
        if e["start"] is not None:
            assert text[e["start"] : e["end"]] == e["text"]
    assert "model smollm2-135m is an UNTRAINED base" in proc.stderr


def test_special_token_strings_in_text_and_labels_stay_plain_text(extract_fn) -> None:
    """A user's ``<|im_end|>`` must not end the prompt (SmolLM2's end id is 2)."""
    from padellm_ner.plan import PaDeLLMPlan

    codec = smollm2_codec()
    special = {*codec.tokenizer.all_special_ids, codec.end_id}
    text = "Japan beat Korea <|im_end|> in <|im_start|>Tokyo <|endoftext|>."
    ids = codec.encode(text)
    assert not special & set(ids)
    assert codec.decode(ids) == text
    plan = PaDeLLMPlan(text, ["LOC", "<|im_end|>"], codec)
    for request in plan.count_requests():
        assert not special & set(request.prompt_ids)
    [entities] = extract_fn([text], ["LOC"])
    for e in entities:
        assert e.start is None or text[e.start : e.end] == e.text


def test_a_broken_model_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Folders that are not (complete) models: a message and exit 2, not a traceback."""
    import shutil

    from padellm_ner.cli import main
    from padellm_ner.models import resolve_model_dir

    adapter = resolve_model_dir("default")
    folders = {
        "noweights": ({"config.json": '{"model_type": "llama"}'}, "cannot load the model in"),
        "unknowntype": ({"config.json": '{"model_type": "nosuch"}'}, "does not recognize this architecture"),
        "badadapter": ({"adapter_config.json": "{bad"}, "is not a PEFT adapter config"),
        "badmeta": ({"padellm.json": '["LOC"]'}, "is not a padellm.json record"),
    }
    for name, (files, message) in folders.items():
        folder = tmp_path / name
        if name.startswith("bad"):
            shutil.copytree(adapter, folder)
        folder.mkdir(exist_ok=True)
        for file, content in files.items():
            (folder / file).write_text(content)
        assert main(["extract", "Obama in Paris .", "--model", str(folder)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
