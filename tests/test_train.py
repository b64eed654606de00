"""Trainer tests on a tiny random Llama with the real SmolLM2 tokenizer (CPU, fast)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from padellm_ner.codec import PromptCodec  # noqa: E402
from padellm_ner.prompts.base import TrainingPair  # noqa: E402
from padellm_ner.train.dataset import (  # noqa: E402
    IGNORE_INDEX,
    collate,
    collate_packed,
    encode_pair,
    keep_zero_count,
    pack_unit,
    plan_epoch,
)
from padellm_ner.train.trainer import (  # noqa: E402
    TrainConfig,
    Trainer,
    TrainResult,
    fit_total_steps,
    latest_checkpoint,
    lr_factor,
)
from padellm_ner.types import Entity, Example  # noqa: E402
from tests.model_cache import make_tiny_llama  # noqa: E402

_SENTENCES = [
    (
        "EU rejects German call to boycott British lamb .",
        [("ORG", "EU"), ("MISC", "German"), ("MISC", "British")],
    ),
    ("Peter Blackburn", [("PER", "Peter Blackburn")]),
    ("BRUSSELS 1996-08-22", [("LOC", "BRUSSELS")]),
    (
        "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann said .",
        [("LOC", "Germany"), ("ORG", "European Union"), ("PER", "Werner Zwingmann")],
    ),
    ("Rare Hendrix song draft sells for almost $ 17,000 .", [("PER", "Hendrix")]),
    ("LONDON 1996-08-22", [("LOC", "LONDON")]),
    ("The market is quiet today .", []),
    (
        "Fischler proposed EU-wide measures after reports from Britain and France .",
        [("PER", "Fischler"), ("MISC", "EU-wide"), ("LOC", "Britain"), ("LOC", "France")],
    ),
]
_TAGS = ["LOC", "PER", "ORG", "MISC"]


def _example(text: str, ents: list[tuple[str, str]], idx: int) -> Example:
    entities, cursor = [], 0
    for label, mention in ents:
        start = text.index(mention, cursor)
        entities.append(Entity(label, mention, start, start + len(mention)))
        cursor = start + len(mention)
    return Example(text, entities, "en", f"train:{idx}")


def _pairs(examples: list[Example]) -> list[list[TrainingPair]]:
    from padellm_ner.prompts import get_format

    fmt = get_format("padellm", "en")
    return [fmt.render(ex, _TAGS) for ex in examples]


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return [_example(t, e, i) for i, (t, e) in enumerate(_SENTENCES)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama saved with the real SmolLM2 tokenizer (end token id 2)."""
    return make_tiny_llama(
        tmp_path_factory.mktemp("tiny-base"),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        generation_config={"eos_token_id": 2, "pad_token_id": 2},
    )


@pytest.fixture(scope="module")
def codec(tiny_base: Path) -> PromptCodec:
    from padellm_ner.models import end_token_id, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_base))
    return PromptCodec(tokenizer, end_token_id(tokenizer, tiny_base))


def _units(examples: list[Example], codec: PromptCodec, pack: bool = True):
    units = []
    for group in _pairs(examples):
        seqs = [encode_pair(p, codec) for p in group]
        units.extend([pack_unit(seqs)] if pack else [pack_unit([s]) for s in seqs])
    return units


def test_label_mask_covers_exactly_the_target(codec: PromptCodec, examples: list[Example]) -> None:
    pair = TrainingPair(
        "text:\nEU rejects\nentity type:\nORG\n\n<num>", ("1\n<mention 1>", "EU"), "ORG"
    )
    seq = encode_pair(pair, codec)
    prompt_ids = codec.encode_prompt(pair.prompt)
    target_ids = codec.encode("1\n<mention 1>") + codec.encode("EU") + [codec.end_id]
    assert list(seq.input_ids) == prompt_ids + target_ids
    assert seq.num_prompt_tokens == len(prompt_ids)
    assert seq.labels == [IGNORE_INDEX] * len(prompt_ids) + target_ids
    batch = collate([seq, encode_pair(TrainingPair("text:\nx", ("0",)), codec)], codec.pad_id)
    row = batch["labels"][0].tolist()
    assert [t for t in row if t != IGNORE_INDEX] == target_ids
    assert batch["attention_mask"][0].sum() == len(seq)
    # the second (shorter) row: padding is neither attended nor a target
    short = batch["labels"][1].tolist()
    assert [t for t in short if t != IGNORE_INDEX] == codec.encode("0") + [codec.end_id]
    # a packed unit predicts exactly the target tokens, from the node before each
    unit = pack_unit([seq])
    assert sorted((n, t) for n, t, _ in unit.loss_items) == [
        (len(prompt_ids) - 1 + i, t) for i, t in enumerate(target_ids)
    ]


def test_packing_shares_prefixes_and_keeps_the_loss(
    tiny_base: Path, codec: PromptCodec, examples: list[Example]
) -> None:
    from transformers import AutoModelForCausalLM

    group = _pairs(examples[:1])[0]  # EU ... : 5 pairs (MISC has 2 mentions)
    seqs = [encode_pair(p, codec) for p in group]
    unit = pack_unit(seqs)
    assert unit.num_sequences == 5
    assert len(unit) < 0.6 * unit.num_raw_tokens
    assert unit.num_target_tokens == sum(s.num_target_tokens for s in seqs)

    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa").eval()
    with torch.no_grad():
        ref = 0.0
        for s in seqs:  # each sequence alone
            logits = model(torch.tensor([s.input_ids])).logits[0, :-1]
            labels = torch.tensor(s.labels[1:])
            ref += float(
                torch.nn.functional.cross_entropy(
                    logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX], reduction="sum"
                )
            )
        other = pack_unit([encode_pair(p, codec) for p in _pairs(examples[1:2])[0]])
        batch = collate_packed([[other, unit], [other]], codec.pad_id)  # two rows, padded
        hidden = model.model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
        ).last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])[batch["loss_index"]]
        losses = torch.nn.functional.cross_entropy(
            model.lm_head(flat), batch["loss_targets"], reduction="none"
        )
        weighted = losses * batch["loss_weights"]
        n_other = len(other.loss_items)
        packed = float(weighted[n_other : n_other + len(unit.loss_items)].sum())
    assert packed == pytest.approx(ref, rel=1e-4)


def test_plan_is_deterministic_and_within_budget() -> None:
    lengths = [10 + (i * 7) % 50 for i in range(300)]
    a = plan_epoch(lengths, 512, 256, seed=3, epoch=0, row_tokens=128)
    assert a == plan_epoch(lengths, 512, 256, seed=3, epoch=0, row_tokens=128)
    assert a != plan_epoch(lengths, 512, 256, seed=3, epoch=1, row_tokens=128)
    seen = sorted(i for step in a for mb in step.micro_batches for row in mb for i in row)
    assert seen == list(range(300))
    for step in a:
        for mb in step.micro_batches:
            assert len(mb) * max(sum(lengths[i] for i in row) for row in mb) <= 256
            assert all(sum(lengths[i] for i in row) <= 128 for row in mb)


def test_zero_count_subsampling_is_stable() -> None:
    zero = [TrainingPair(f"p{i}", ("0",), "X") for i in range(400)]
    kept = [keep_zero_count(p, 0.5, seed=1) for p in zero]
    assert kept == [keep_zero_count(p, 0.5, seed=1) for p in zero]
    assert 150 < sum(kept) < 250
    assert keep_zero_count(TrainingPair("p", ("1\n<mention 1>", "EU"), "X"), 0.0, 1)


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-9)


def _config(out: Path, base: Path, **kw) -> TrainConfig:
    defaults = dict(
        out=str(out),
        base=str(base),
        lora=True,
        lora_r=8,
        lora_alpha=16,
        lr=1e-2,
        warmup=0.1,
        max_steps=30,
        batch_tokens=400,
        micro_tokens=400,
        row_tokens=200,
        save_every=10,
        threads=1,
        progress=False,
        log_every=5,
        epochs=100,
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


def test_lora_training_lowers_loss_and_saves_a_loadable_adapter(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    from padellm_ner.models import load_model

    out = tmp_path / "run"
    trainer = Trainer(_config(out, tiny_base, max_steps=40, lr=1e-2, epochs=100))
    result = trainer.train(_units(examples, codec))
    assert result.steps == 40
    first, last = result.losses[:5], result.losses[-5:]
    # NOTE: initializer_range=0.3 lets a LoRA on a frozen tied head reach far below ln(V)
    assert sum(last) / 5 < sum(first) / 5 - 1.0
    assert (out / "adapter_model.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_base.resolve())
    assert latest_checkpoint(out).name == "step-40"

    loaded = load_model(str(out))
    assert loaded.is_adapter and loaded.end_id == 2
    prompt = codec.encode("text:\nPeter Blackburn\nentity type:\nPER\n\n<num>")
    with torch.no_grad():
        gen = loaded.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=4,
            do_sample=False,
            eos_token_id=loaded.end_id,
            pad_token_id=loaded.end_id,
        )
    assert gen.shape[1] > len(prompt)


def test_resume_continues_from_the_checkpoint_step(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    units = _units(examples, codec)
    full = Trainer(_config(tmp_path / "full", tiny_base, max_steps=6, save_every=2)).train(units)
    # interrupted: the time limit stops it after its first step (checkpoint step-1)
    cut = Trainer(_config(tmp_path / "cut", tiny_base, max_steps=6, save_every=2, max_minutes=0.0))
    first = cut.train(units)
    assert first.steps == 1
    assert latest_checkpoint(tmp_path / "cut").name == "step-1"
    # steps logged after the checkpoint by the killed run (and a line torn by the kill)
    with open(tmp_path / "cut" / "train_log.jsonl", "a") as log:
        log.write(json.dumps({"step": 2, "loss": 9.9}) + "\n" + '{"step": 3, "lo')
    resumed = Trainer(_config(tmp_path / "cut", tiny_base, max_steps=6, save_every=2, resume=True))
    result = resumed.train(units)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "train_log.jsonl").open()]
    assert steps == sorted(set(steps)) and 9.9 not in [
        json.loads(line)["loss"] for line in (tmp_path / "cut" / "train_log.jsonl").open()
    ]
    assert result.steps == 6 and len(result.losses) == 6
    assert result.losses[:1] == first.losses
    # exact continuation: same data order, weights, optimizer, schedule and RNG
    assert result.losses == pytest.approx(full.losses, rel=1e-4)


def test_resume_with_another_lora_shape_or_recipe_is_refused(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    """A checkpoint's weights mean its LoRA shape and its data: resuming with another
    --lora-r used to crash on a tensor size, another --format resumed silently."""
    from padellm_ner.errors import InvalidInputError

    units = _units(examples, codec)
    recipe = {"format": "padellm", "datasets": {"conll2003": {}}}
    Trainer(_config(tmp_path / "run", tiny_base, max_steps=1, save_every=1, recipe=recipe)).train(units)
    for change, message in (
        ({"lora_r": 4}, "lora_r 8 -> 4"),
        ({"recipe": {**recipe, "format": "ar_struct"}}, "'format': 'ar_struct'"),
    ):
        cfg = _config(tmp_path / "run", tiny_base, max_steps=2, resume=True, **{"recipe": recipe, **change})
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            Trainer(cfg).train(units)
    # the same base named by another path is the same base
    same = _config(tmp_path / "run", tiny_base, max_steps=2, resume=True, recipe=recipe)
    same.base = str(tiny_base.parent / "." / tiny_base.name)
    assert Trainer(same).train(units).steps == 2


def test_stop_at_step_keeps_the_planned_schedule(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    """--stop-at-step ends a 6-step run after step 3 on the 6-step schedule (a --max-minutes
    cut made reproducible); --max-steps 3 would plan 3 steps and decay the LR to 0 by then."""
    units = _units(examples, codec)
    def run(name: str, **kw) -> TrainResult:
        cfg = _config(tmp_path / name, tiny_base, save_every=2, log_every=1, **kw)
        return Trainer(cfg).train(units)

    full = run("full", max_steps=6)
    cut = run("cut", max_steps=6, stop_at_step=3)
    run("short", max_steps=3)
    assert (cut.steps, cut.total_steps) == (3, 6)
    assert cut.losses == pytest.approx(full.losses[:3], rel=1e-4)
    lr = {
        name: [json.loads(line)["lr"] for line in (tmp_path / name / "train_log.jsonl").open()]
        for name in ("full", "cut", "short")
    }
    assert lr["cut"][-1] == pytest.approx(lr["full"][2]) and lr["cut"][-1] > lr["short"][-1]
    assert latest_checkpoint(tmp_path / "cut").name == "step-3"
    # the same command again with --resume is done already: it used to train step 4
    again = run("cut", max_steps=6, stop_at_step=3, resume=True)
    assert (again.steps, again.losses) == (3, cut.losses)
    assert latest_checkpoint(tmp_path / "cut").name == "step-3"


def test_fit_total_steps_only_shortens() -> None:
    assert fit_total_steps(10, 100, 1.0, 1000.0) == 100  # the plan fits: unchanged
    assert fit_total_steps(10, 100, 1.0, 40.0) == 10 + 38  # 95% of the 40 s left
    assert fit_total_steps(10, 100, 1.0, 0.0) == 11  # out of time: one last step
    assert fit_total_steps(10, 100, 0.0, 5.0) == 100  # no timing yet


def test_fit_schedule_decays_the_lr_inside_the_time_limit(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    """2,000 planned steps cannot run in 6 s: the fitted run ends on its own shortened
    schedule with the LR near 0, where a plain --max-minutes cut stops near the peak LR;
    a resume keeps the fitted schedule instead of re-planning 2,000 steps."""
    units = _units(examples, codec)
    cfg = dict(
        max_steps=2000, epochs=10_000, max_minutes=0.1, warmup=0.0, log_every=1, save_every=1000,
        lr=1e-3,
    )
    fitted = Trainer(_config(tmp_path / "fit", tiny_base, fit_schedule=True, **cfg)).train(units)
    cut = Trainer(_config(tmp_path / "cut", tiny_base, **cfg)).train(units)
    assert fitted.planned_steps == 2000 and fitted.total_steps < 2000
    assert cut.planned_steps == cut.total_steps == 2000 and cut.steps < 2000
    last_lr = {
        name: json.loads((tmp_path / name / "train_log.jsonl").read_text().splitlines()[-1])["lr"]
        for name in ("fit", "cut")
    }
    assert last_lr["fit"] < 0.05 * 1e-3 < 0.9 * 1e-3 < last_lr["cut"]
    again = Trainer(
        _config(tmp_path / "fit", tiny_base, fit_schedule=True, resume=True, **cfg)
    ).train(units)
    assert (again.steps, again.total_steps) == (fitted.steps, fitted.total_steps)


def test_full_fine_tune_saves_a_model(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    from padellm_ner.models import load_model

    out = tmp_path / "full-ft"
    result = Trainer(_config(out, tiny_base, lora=False, lr=1e-3, max_steps=3)).train(
        _units(examples, codec)
    )
    assert result.steps == 3
    loaded = load_model(str(out))
    assert not loaded.is_adapter and loaded.end_id == 2


def test_cli_writes_padellm_json(tiny_base: Path, tmp_path: Path) -> None:
    from padellm_ner.train.cli import main

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"PER": "person", "LOC": "location"}))
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--dataset",
            "conll2003",
            "--base",
            str(tiny_base),
            "--out",
            str(out),
            "--limit",
            "6",
            "--max-steps",
            "2",
            "--epochs",
            "5",
            "--batch-tokens",
            "512",
            "--threads",
            "1",
            "--labels-file",
            str(labels),
            "--eval-limit",
            "3",
            "--zero-count-keep",
            "0.5",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "padellm.json").read_text())
    assert meta["format"] == "padellm" and meta["dataset"] == "conll2003"
    assert meta["tags"] == ["LOC", "PER"] and meta["labels"] == ["location", "person"]
    assert meta["lang"] == "en" and meta["base"] == str(tiny_base)
    assert meta["train"]["zero_count_keep"] == 0.5 and meta["train"]["steps"] == 2
    assert "dev_loss" in meta["eval"]["conll2003"]
    # dev F1 through the real inference path (Extractor + evaluate_model) on the saved adapter
    assert "set" in meta["eval"]["conll2003"]["f1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--skip", "99999"], "no training sentences left after --skip 99999 (train sentences: conll2003 14041)"),
        (["--limit", "3", "--max-len", "3"], "every training sequence is longer than --max-len 3 tokens"),
    ],
)
def test_cli_with_nothing_to_train_is_a_clear_error(
    tiny_base: Path, tmp_path: Path, extra: list[str], message: str, capsys
) -> None:
    """It used to end in a traceback (``ValueError: no training sequences``, exit 1) after
    the model had loaded, and ``--skip`` past the data left a ``padellm.json`` behind."""
    from padellm_ner.cli import main

    out = tmp_path / "none"
    argv = ["train", "--dataset", "conll2003", "--base", str(tiny_base), "--out", str(out), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["ar_aug", "ar_struct", "onestep"])
def test_cli_baselines_and_concatenated_datasets(tiny_base: Path, tmp_path: Path, fmt: str) -> None:
    from padellm_ner.data import dataset_info
    from padellm_ner.train.cli import main

    out = tmp_path / fmt
    rc = main(
        [
            "train",
            "--dataset",
            "conll2003,wnut17",
            "--format",
            fmt,
            "--base",
            str(tiny_base),
            "--out",
            str(out),
            "--limit",
            "3",
            "--max-steps",
            "1",
            "--threads",
            "1",
            "--eval-limit",
            "0",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "padellm.json").read_text())
    wnut = dataset_info("wnut17")
    assert meta["format"] == fmt and meta["dataset"] == "conll2003,wnut17"
    assert meta["tags"] == _TAGS_BY_FREQ + list(wnut.labels)
    assert len(meta["labels"]) == len(meta["tags"])
    assert meta["train"]["sentences"] == {"conll2003": 3, "wnut17": 3}
    assert (out / "adapter_model.safetensors").exists()


_TAGS_BY_FREQ = ["LOC", "PER", "ORG", "MISC"]


def test_export_copies_only_servable_files(
    tiny_base: Path, codec: PromptCodec, examples: list[Example], tmp_path: Path
) -> None:
    from padellm_ner.models import load_model, load_tokenizer
    from padellm_ner.train.cli import export_model

    out = tmp_path / "run"
    Trainer(_config(out, tiny_base, max_steps=2, save_every=1)).train(_units(examples[:2], codec))
    (out / "padellm.json").write_text(
        json.dumps({"format": "padellm", "tags": ["PER"], "labels": ["PER"]})
    )
    dst = tmp_path / "asset"
    names = {p.name for p in export_model(out, dst)}
    assert {"adapter_model.safetensors", "adapter_config.json", "padellm.json"} <= names
    # the run's tokenizer is the base's: the export leaves it out and loading falls back
    assert "tokenizer.json" not in names and not (dst / "tokenizer.json").exists()
    assert load_tokenizer(str(dst)).encode("Ada Lovelace") == load_tokenizer(
        str(tiny_base)
    ).encode("Ada Lovelace")
    assert not (dst / "checkpoints").exists()
    # a tokenizer that differs from the base's travels with the adapter
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 77}))
    names = {p.name for p in export_model(out, tmp_path / "asset3")}
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert load_tokenizer(str(tmp_path / "asset3")).model_max_length == 77
    from padellm_ner.train.cli import main

    assert (
        main(["export", str(out), str(tmp_path / "asset2"), "--command", "padellm-ner train X"])
        == 0
    )
    card = (tmp_path / "asset2" / "MODEL_CARD.md").read_text()
    assert "padellm-ner train X" in card and "not measured" in card
    assert load_model(str(dst)).is_adapter


def test_training_curve_follows_warm_start_stages(tmp_path: Path) -> None:
    """The model card's curve covers the run and the runs it warm-started from."""
    from padellm_ner.train.cli import _stages
    from padellm_ner.train.curve import plot_training_curve, stage_dirs

    first, second = tmp_path / "s1", tmp_path / "s2"
    for run, init, n in ((first, None, 30), (second, str(first), 40)):
        run.mkdir()
        train = {"sentences": {"conll2003": n}, "epochs_done": 1.0, "init_adapter": init}
        meta = {"format": "padellm", "train": train, "eval": {"conll2003": {"f1": {"f1": n / 2}}}}
        (run / "padellm.json").write_text(json.dumps(meta))
        (run / "train_log.jsonl").write_text(
            "\n".join(json.dumps({"epoch": e, "loss": 1 / (1 + e)}) for e in (0.5, 1.0))
        )
    assert stage_dirs(second) == [first, second] and stage_dirs(first) == [first]
    assert [s["train"]["sentences"]["conll2003"] for s in _stages(json.loads((second / "padellm.json").read_text()))] == [30, 40]
    png = plot_training_curve(second, tmp_path / "curve.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (first / "train_log.jsonl").unlink()
    (second / "train_log.jsonl").unlink()
    assert plot_training_curve(second, tmp_path / "none.png") is None


def test_model_card_counts_repeated_sentences_once_and_passes_in_full() -> None:
    """A second pass over earlier sentences adds passes (epochs), not distinct sentences."""
    from padellm_ner.train.cli import _coverage, model_card

    def stage(skip: int, n: int, done: float = 1.0) -> dict:
        return {"train": {"skip": skip, "sentences": {"conll2003": n}, "epochs_done": done}}

    stages = [stage(0, 3000), stage(3000, 4000), stage(7000, 7041), stage(0, 7000)]
    assert _coverage(stages) == (14041, 21041.0)
    assert _coverage([stage(0, 100, 0.5), stage(20, 30)]) == (50, 80.0)
    meta = {"base": "smollm2-135m", "format": "padellm", "train": {
        "sentences": {"conll2003": 100}, "sentences_available": {"conll2003": 400}}}
    card = model_card(meta, "padellm-ner train X")
    assert "100 of 400 in the train split (25.0%); 100 sentence passes in all (0.25 epochs)" in card
    assert "`<|im_end|>`" in card and "(SmolLM2-135M-Instruct)" in card


def test_model_card_says_how_the_model_was_trained_not_how_the_default_was() -> None:
    """The card wrote LoRA, PaDeLLM targets, all zero-count sequences and packing for any run."""
    from padellm_ner.train.cli import model_card

    meta = {"base": "smollm2-135m", "format": "ar_struct", "lora": None, "train": {
        "sentences": {"conll2003": 6}, "sentences_available": {"conll2003": 6}, "packed": False,
        "zero_count_keep": 1.0, "device": "cuda"}}  # fmt: skip
    card = model_card(meta, "padellm-ner train X")
    assert "full fine-tune of `smollm2-135m`" in card and "Full fine-tune: every weight trained" in card
    assert "LoRA" not in card and "float16" not in card and "<mention k>" not in card
    assert "the ar_struct answer text" in card and "Packing: off" in card and "bf16 autocast" in card
    assert "Zero-count" not in card  # a PaDeLLM notion
    meta.update(format="padellm", lora={"r": 8, "alpha": 16})
    meta["train"].update(zero_count_keep=0.5, packed=True, device="cpu")
    card = model_card(meta, "padellm-ner train X")
    assert "LoRA r=8, alpha=16" in card and "50% (`--zero-count-keep 0.5`" in card and "fp32." in card


def test_model_card_limits_name_the_papers_result_for_the_dataset_trained() -> None:
    from padellm_ner.train.cli import model_card

    def card(dataset: str) -> str:
        meta = {"base": "gemma3-270m", "format": "padellm", "dataset": dataset, "train": {
            "sentences": {dataset: 10}, "sentences_available": {dataset: 10}}}
        return model_card(meta, "padellm-ner train X")

    weibo = card("weibo")
    assert "weibo F1 67.36" in weibo and "F1 >= 90" not in weibo
    assert "--dataset weibo --base gemma3-270m" in weibo
    assert "conll2003 F1 92.52" in card("conll2003") and "F1 >= 90" in card("conll2003")
    assert "paper" not in card("/data/own").split("## Limits")[1]  # no paper figure to cite


def test_overwrite_starts_clean_and_a_checkpoint_decodes_like_its_run(tiny_base: Path, tmp_path: Path) -> None:
    """``--overwrite`` used to keep the old run's checkpoints and log (a later ``--resume``
    loaded the old weights); a checkpoint folder carries the run's padellm.json, so it
    decodes with the run's method and labels, not as an untrained PaDeLLM default."""
    from padellm_ner.model_info import read_model_info
    from padellm_ner.train.cli import main

    out = tmp_path / "run"
    common = ["train", "--dataset", "conll2003", "--base", str(tiny_base), "--out", str(out), "--limit", "6",
              "--threads", "1", "--eval-limit", "0", "--log-every", "1"]  # fmt: skip
    assert main([*common, "--format", "ar_struct", "--batch-tokens", "256", "--save-every", "1"]) == 0
    old_steps = json.loads((out / "padellm.json").read_text())["train"]["steps"]
    assert old_steps > 1
    info = read_model_info(latest_checkpoint(out))
    assert info.trained and info.format == "ar_struct"
    assert main([*common, "--format", "padellm", "--batch-tokens", "4096", "--max-steps", "1", "--overwrite"]) == 0
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]
    assert read_model_info(out).format == "padellm"


def test_datasets_whose_prompt_words_collide_are_refused() -> None:
    """weibo PER.NAM and resume NAME are both 人名: inference asked once and labelled every
    person NAME; LOC is 地址 in resume and 地点 in msra, one of which went unrecorded."""
    from padellm_ner.errors import InvalidInputError
    from padellm_ner.train.cli import load_datasets

    for names, message in (
        ("weibo,resume", "PER.NAM (weibo) and NAME (resume) have the same label words '人名'"),
        ("resume,msra", "tag LOC is '地址' in resume but '地点' in msra"),
        ("weibo,weibo", "--dataset names weibo more than once"),
    ):
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            load_datasets(names)
    assert [s.name for s in load_datasets("conll2003,wnut17")] == ["conll2003", "wnut17"]
