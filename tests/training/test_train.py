"""The training loop's parts, and short real runs of a tiny model on a tiny corpus (CPU)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mtserve.model.checkpoint import load_model
from mtserve.model.tokenizers import MarianTokenizer
from mtserve.model.transformer import Transformer
from mtserve.training import train as tr
from mtserve.training.vocab import train_vocab

ADJECTIVES = [("rot", "red"), ("blau", "blue"), ("grün", "green"), ("gelb", "yellow"),
              ("schwarz", "black"), ("weiß", "white"), ("groß", "big"), ("klein", "small")]
NOUNS = [("Haus", "house"), ("Auto", "car"), ("Buch", "book"), ("Boot", "boat"),
         ("Pferd", "horse"), ("Schaf", "sheep"), ("Bett", "bed"), ("Fenster", "window")]


def tiny_corpus() -> list[tuple[str, str]]:
    """128 pairs a small model can start to learn in a few dozen steps."""
    pairs = []
    for de_adj, en_adj in ADJECTIVES:
        for de_noun, en_noun in NOUNS:
            pairs.append((f"das {de_adj}e {de_noun}", f"the {en_adj} {en_noun}"))
            pairs.append((f"Das {de_noun} ist {de_adj}.", f"The {en_noun} is {en_adj}."))
    return pairs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir with train/dev/dev-sentences, vocab dir)."""
    root = tmp_path_factory.mktemp("corpus")
    pairs = tiny_corpus()
    splits = {"train": [p for i, p in enumerate(pairs) if i % 7], "dev": pairs[::7]}
    splits["dev-sentences"] = [p for p in splits["dev"] if p[0].endswith(".")]
    splits["train-sentences"] = [p for p in splits["train"] if p[0].endswith(".")]
    for name, items in splits.items():
        for side, lang in enumerate(("de", "en")):
            (root / f"{name}.{lang}").write_text("".join(p[side] + "\n" for p in items), encoding="utf-8")
    vocab = train_vocab([root / "train.de", root / "train.en"], root / "vocab", size=64, threads=1)
    return root, vocab


def tiny_config(corpus: tuple[Path, Path], out: Path, **overrides) -> tr.TrainConfig:
    data, vocab = corpus
    values = dict(
        data=data, vocab=vocab, out=out, d_model=32, layers=1, heads=2, ffn=64, max_tokens=256,
        lr=3e-3, warmup=5, max_steps=40, eval_interval=20, eval_size=8, seed=3, device="cpu",
        threads=1, progress=False,
    )
    values.update(overrides)
    return tr.TrainConfig(**values)


def read_log(cfg: tr.TrainConfig) -> list[dict]:
    return [json.loads(line) for line in (cfg.state_dir / "log.jsonl").read_text().splitlines()]


# --- parts ----------------------------------------------------------------------------------------


def _examples(lengths: list[tuple[int, int]]) -> list[tr.Example]:
    return [([5] * s, [6] * t) for s, t in lengths]


def test_batches_stay_under_the_token_budget_and_use_every_example_once():
    gen = torch.Generator().manual_seed(0)
    lengths = [(int(a), int(b)) for a, b in torch.randint(1, 60, (500, 2), generator=gen)]
    examples = _examples(lengths)
    batches = tr.make_batches(examples, max_tokens=300, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        longest = max(max(lengths[i]) for i in batch)
        assert len(batch) * longest <= 300
    # Bucketing: a batch's lengths are close, so padding stays small.
    padded = sum(len(b) * max(max(lengths[i]) for i in b) for b in batches)
    assert padded < 1.3 * sum(max(x) for x in lengths)


def test_batches_are_reproducible_per_epoch_and_reshuffled_between_epochs():
    examples = _examples([(n % 17 + 1, n % 13 + 1) for n in range(300)])
    first = tr.make_batches(examples, 64, seed=1, epoch=0)
    assert first == tr.make_batches(examples, 64, seed=1, epoch=0)
    assert first != tr.make_batches(examples, 64, seed=1, epoch=1)
    assert first != tr.make_batches(examples, 64, seed=2, epoch=0)


def test_collate_puts_decoder_start_before_the_shifted_target():
    pad, start, eos = 9, 9, 0
    batch = tr.collate([([3, 4, eos], [5, 6, 7, eos]), ([3, eos], [8, eos])], pad, start, torch.device("cpu"))
    assert batch.input_ids.tolist() == [[3, 4, eos], [3, eos, pad]]
    assert batch.attention_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.labels.tolist() == [[5, 6, 7, eos], [8, eos, pad, pad]]
    assert batch.decoder_input_ids.tolist() == [[start, 5, 6, 7], [start, 8, pad, pad]]
    assert (batch.target_tokens, batch.tokens) == (6, 11)


def test_loss_without_smoothing_is_cross_entropy_ignoring_pad():
    pad = 4
    logits = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, 0], [3, pad, pad]])
    loss, nll = tr.label_smoothed_loss(logits, labels, pad, 0.0)
    expected = F.cross_entropy(logits.view(-1, 6), labels.view(-1), ignore_index=pad, reduction="sum")
    assert torch.allclose(loss, expected) and torch.allclose(nll, expected)


def test_smoothing_spreads_mass_over_non_pad_ids_and_pad_rows_do_not_count():
    pad, eps = 4, 0.1
    logits = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[2, pad]])
    loss, nll = tr.label_smoothed_loss(logits, labels, pad, eps)
    logprobs = logits[0, 0].log_softmax(-1)
    others = [i for i in range(6) if i != pad]
    expected = (1 - eps) * -logprobs[2] + eps * -logprobs[others].mean()
    assert torch.allclose(loss, expected) and torch.allclose(nll, -logprobs[2])
    logits[0, 1] += 100.0  # anything at a pad position must not change the loss
    assert torch.allclose(tr.label_smoothed_loss(logits, labels, pad, eps)[0], expected)


def test_learning_rate_warms_up_linearly_then_decays_with_inverse_square_root():
    factor = tr.inverse_sqrt_schedule(warmup=100)
    assert factor(0) == pytest.approx(0.01)
    assert factor(49) == pytest.approx(0.5)
    assert factor(99) == pytest.approx(1.0)
    assert factor(399) == pytest.approx(0.5)
    assert all(factor(s) > factor(s + 1) for s in range(99, 500))


def test_cosine_schedule_warms_up_then_falls_to_zero_when_the_run_ends():
    done = {"fraction": 0.0}
    factor = tr.cosine_schedule(warmup=10, progress=lambda step: done["fraction"])
    assert factor(4) == pytest.approx(0.5)
    assert factor(9) == pytest.approx(1.0)
    done["fraction"] = 0.5
    assert factor(500) == pytest.approx(0.5)
    done["fraction"] = 1.0
    assert factor(500) == pytest.approx(0.0)
    done["fraction"] = 3.0  # past the horizon (a slow last step): stays at zero, never climbs back
    assert factor(500) == pytest.approx(0.0)


def test_config_validation_names_the_bad_value(tmp_path: Path):
    with pytest.raises(ValueError, match="d_model 30 is not divisible by heads 4"):
        tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "m", d_model=30, heads=4)
    with pytest.raises(ValueError, match="dropout"):
        tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "m", dropout=1.5)
    with pytest.raises(ValueError, match="schedule must be one of inverse-sqrt, cosine, got 'linear'"):
        tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "m", schedule="linear")
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\), got 1.0"):
        tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "m", ema_decay=1.0)
    with pytest.raises(ValueError, match="oversample_sentences must be a positive integer, got 0"):
        tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "m", oversample_sentences=0)
    cfg = tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "model")
    assert cfg.state_dir == tmp_path / "model.train"


def test_command_line_maps_onto_the_config(tmp_path: Path):
    cfg = tr.parse_args([
        "--data", "d", "--vocab", "v", "--out", str(tmp_path / "m"), "--d-model", "64", "--layers", "2",
        "--heads", "8", "--ffn", "128", "--max-tokens", "2048", "--lr", "1e-3", "--warmup", "10",
        "--max-steps", "7", "--max-time", "60", "--eval-interval", "5", "--seed", "4", "--threads", "1",
        "--device", "cpu", "--eval-sets", "dev", "--no-amp", "--encoder-layers", "4", "--schedule", "cosine",
        "--ema-decay", "0.999", "--oversample-sentences", "3",
    ])
    assert (cfg.d_model, cfg.layers, cfg.heads, cfg.ffn, cfg.max_tokens) == (64, 2, 8, 128, 2048)
    assert (cfg.lr, cfg.warmup, cfg.max_steps, cfg.max_time, cfg.eval_interval) == (1e-3, 10, 7, 60.0, 5)
    assert (cfg.seed, cfg.threads, cfg.device, cfg.eval_sets, cfg.amp) == (4, 1, "cpu", ("dev",), False)
    assert (cfg.encoder_layers, cfg.decoder_layers) == (4, 2)  # --decoder-layers defaults to --layers
    assert (cfg.schedule, cfg.ema_decay, cfg.oversample_sentences) == ("cosine", 0.999, 3)


# --- real runs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[tr.TrainConfig, tr.TrainResult]:
    cfg = tiny_config(corpus, tmp_path_factory.mktemp("run") / "model")
    return cfg, tr.train(cfg)


def test_training_lowers_the_loss(trained):
    cfg, result = trained
    losses = [r["loss"] for r in read_log(cfg) if "loss" in r]
    assert result.step == 40 and len(losses) == 4
    assert losses[-1] < losses[0] - 0.5, losses
    evals = [r["eval"] for r in read_log(cfg) if "eval" in r]
    assert len(evals) == 2  # at step 20 and at step 40
    assert evals[-1]["dev/loss"] < evals[0]["dev/loss"]
    assert set(evals[-1]) == {f"{s}/{m}" for s in ("dev", "dev-sentences") for m in ("bleu", "chrf", "loss")}
    assert all(0.0 <= v <= 100.0 for k, v in evals[-1].items() if not k.endswith("loss"))


def test_the_final_model_is_a_marian_directory_that_load_model_reloads(trained):
    cfg, _ = trained
    names = {p.name for p in cfg.out.iterdir()}
    assert names == {"config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json",
                     "tokenizer_config.json", "generation_config.json"}
    config, model = load_model(cfg.out, device="cpu", dtype="float32")
    vocab = MarianTokenizer.from_dir(cfg.vocab)
    assert (config.vocab_size, config.pad_token_id, config.decoder_start_token_id) == (64, 63, 63)
    generation = json.loads((cfg.out / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == generation["pad_token_id"] == vocab.pad_id
    assert generation["bad_words_ids"] == [[vocab.pad_id]] and generation["eos_token_id"] == 0

    # The checkpoint holds the same weights as the exported model.
    state = torch.load(cfg.state_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 40
    reference = Transformer(config)
    reference.load_state_dict(state["model"])
    reference.eval()
    src = torch.tensor([vocab.encode("Das Haus ist rot.")])
    dec = torch.tensor([[vocab.pad_id, *vocab.encode_target("The house")[:-1]]])  # without </s>
    mask = torch.ones_like(src, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model(src, mask, dec), reference(src, mask, dec))


def test_the_final_model_loads_in_transformers_with_identical_logits(trained):
    transformers = pytest.importorskip("transformers")
    cfg, _ = trained
    hf = transformers.MarianMTModel.from_pretrained(cfg.out).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(cfg.out)
    _, ours = load_model(cfg.out, device="cpu", dtype="float32")
    inputs = tokenizer(["Das Boot ist blau.", "das kleine Schaf"], return_tensors="pt", padding=True)
    pad = tokenizer.pad_token_id
    dec = torch.tensor([[pad, 10, 11], [pad, 12, 13]])
    with torch.no_grad():
        expected = hf(**inputs, decoder_input_ids=dec).logits
        got = ours(inputs["input_ids"], inputs["attention_mask"].bool(), dec)
    assert torch.allclose(got, expected, atol=1e-5)


def test_eval_decoding_is_the_translators_greedy_search_with_a_length_cap(trained):
    translator_module = pytest.importorskip("mtserve.engine.translator")
    cfg, _ = trained
    translator = translator_module.Translator.load(cfg.out, device="cpu", dtype="float32")
    vocab = MarianTokenizer.from_dir(cfg.vocab)
    texts = ["Das Haus ist rot.", "das gelbe Bett", "Das Schaf ist weiß.", "das blaue Fenster", "Buch"]
    sources = [vocab.encode(t) for t in texts]
    ours = tr.greedy_decode(translator.model, sources, max_rows=2)  # fewer rows than texts: queueing too
    served = [t.token_ids for t in translator.translate(texts, beam_size=1)]
    for source, mine, theirs in zip(sources, ours, served, strict=True):
        cap = 2 * len(source) + 10  # max_length counts the forced </s>, which the ids leave out
        assert len(mine) < cap
        assert mine == (theirs[: cap - 1] if len(theirs) >= cap - 1 else theirs)
    assert translator.model.training is False


def test_a_resumed_run_continues_from_the_saved_step_exactly(corpus, tmp_path: Path):
    straight = tiny_config(corpus, tmp_path / "straight" / "model", max_steps=30, eval_interval=10)
    assert tr.train(straight).step == 30

    split = replace(straight, out=tmp_path / "split" / "model", state_dir=None, max_steps=20)
    first = tr.train(split)
    assert (first.resumed_from, first.step) == (0, 20)
    resumed = tr.train(replace(split, max_steps=30))
    assert (resumed.resumed_from, resumed.step) == (20, 30)
    starts = [r for r in read_log(split) if r.get("event") == "start"]
    assert [s["step"] for s in starts] == [0, 20]

    # Same batches, dropout masks, optimizer moments and learning rates: the same weights as one run.
    a = load_file(straight.out / "model.safetensors")
    b = load_file(split.out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_time_stops_the_run_and_still_writes_the_model(corpus, tmp_path: Path):
    cfg = tiny_config(corpus, tmp_path / "model", max_steps=100_000, max_time=1.0, eval_interval=100_000)
    result = tr.train(cfg)
    assert 0 < result.step < 100_000
    assert (cfg.out / "model.safetensors").exists() and not math.isnan(result.loss)


def test_init_from_starts_at_the_given_weights_and_rejects_another_architecture(trained, corpus, tmp_path: Path):
    cfg, _ = trained
    # A learning rate of ~0 leaves the weights where --init-from put them.
    cont = tiny_config(corpus, tmp_path / "continued", init_from=cfg.out, max_steps=1, lr=1e-30, warmup=1)
    tr.train(cont)
    before, after = load_file(cfg.out / "model.safetensors"), load_file(cont.out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)

    other = tiny_config(corpus, tmp_path / "other", init_from=cfg.out, d_model=16, max_steps=1)
    with pytest.raises(ValueError, match=r"--init-from .* different model"):
        tr.train(other)


def test_save_dtype_float16_halves_the_weights_file(corpus, trained, tmp_path: Path):
    cfg, _ = trained
    half = tiny_config(corpus, tmp_path / "half", max_steps=1, save_dtype="float16")
    tr.train(half)
    weights = load_file(half.out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float16}
    full_size = (cfg.out / "model.safetensors").stat().st_size
    assert (half.out / "model.safetensors").stat().st_size < 0.6 * full_size


def test_the_pad_embedding_stays_zero_as_marian_and_ctranslate2_assume(trained):
    """The decoder starts from <pad>; CTranslate2 starts it from a zero vector and drops that row."""
    cfg, _ = trained
    config, model = load_model(cfg.out, device="cpu")
    for table in (model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight, model.lm_head.weight):
        assert torch.count_nonzero(table[config.pad_token_id]) == 0
        assert torch.count_nonzero(table) > 0


def test_encoder_and_decoder_depths_can_differ(corpus, tmp_path: Path):
    cfg = tiny_config(corpus, tmp_path / "model", encoder_layers=2, decoder_layers=1, max_steps=2)
    tr.train(cfg)
    config, model = load_model(cfg.out, device="cpu")
    assert (config.encoder_layers, config.decoder_layers) == (2, 1)
    assert (len(model.encoder.layers), len(model.decoder.layers)) == (2, 1)


def test_oversampling_repeats_the_full_sentence_pairs(corpus, tmp_path: Path):
    data, _ = corpus
    train_pairs = len((data / "train.de").read_text().splitlines())
    sentences = len((data / "train-sentences.de").read_text().splitlines())
    assert 0 < sentences < train_pairs
    cfg = tiny_config(corpus, tmp_path / "model", oversample_sentences=3, max_steps=1)
    tr.train(cfg)
    start = next(r for r in read_log(cfg) if r.get("event") == "start")
    assert start["examples"] == train_pairs + 2 * sentences


def test_ema_exports_the_moving_average_of_the_weights(corpus, tmp_path: Path):
    """EMA starts at the first step's weights, then moves (1 - decay) of the way each step."""
    decay = 0.75
    w1 = load_file(tr.train(tiny_config(corpus, tmp_path / "one", max_steps=1)).out / "model.safetensors")
    w2 = load_file(tr.train(tiny_config(corpus, tmp_path / "two", max_steps=2)).out / "model.safetensors")
    ema_run = tiny_config(corpus, tmp_path / "ema", max_steps=2, ema_decay=decay)
    averaged = load_file(tr.train(ema_run).out / "model.safetensors")
    assert averaged.keys() == w1.keys()
    moved = [k for k in w1 if not torch.equal(w1[k], w2[k])]
    assert moved  # the second step changed weights, so the average is neither of them
    for key in w1:
        assert torch.allclose(averaged[key], decay * w1[key] + (1 - decay) * w2[key], atol=1e-6), key


def test_a_resumed_ema_run_matches_an_uninterrupted_one(corpus, tmp_path: Path):
    straight = tiny_config(corpus, tmp_path / "straight", max_steps=6, eval_interval=3, ema_decay=0.9)
    tr.train(straight)
    split = replace(straight, out=tmp_path / "split", state_dir=None, max_steps=3)
    tr.train(split)
    tr.train(replace(split, max_steps=6))
    a, b = load_file(straight.out / "model.safetensors"), load_file(split.out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A checkpoint without an average cannot silently start one half-way.
    plain = tiny_config(corpus, tmp_path / "plain", max_steps=2)
    tr.train(plain)
    with pytest.raises(ValueError, match="trained without --ema-decay"):
        tr.train(replace(plain, max_steps=3, ema_decay=0.9))


def test_average_writes_the_mean_of_the_weights_and_refuses_other_architectures(corpus, trained, tmp_path: Path):
    from mtserve.training.average import average_models

    cfg, _ = trained
    other = tr.train(tiny_config(corpus, tmp_path / "other", seed=11, max_steps=5)).out
    soup = average_models([cfg.out, other], tmp_path / "soup")
    a, b, mean = (load_file(p / "model.safetensors") for p in (cfg.out, other, soup))
    assert a.keys() == mean.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for key in a:
        torch.testing.assert_close(mean[key], (a[key] + b[key]) / 2)
    assert {p.name for p in soup.iterdir()} >= {"config.json", "source.spm", "target.spm", "vocab.json",
                                                 "generation_config.json"}
    _, model = load_model(soup, device="cpu")  # a Marian directory that loads, tied weights still tied
    assert model.lm_head.weight is model.decoder.embed_tokens.weight

    small = tr.train(tiny_config(corpus, tmp_path / "small", d_model=16, max_steps=1)).out
    with pytest.raises(ValueError, match="describes a different model"):
        average_models([cfg.out, small], tmp_path / "bad")
    with pytest.raises(ValueError, match="at least two models"):
        average_models([cfg.out], tmp_path / "one")


# --- source weights -----------------------------------------------------------------------------


def test_epoch_indices_follow_the_weights_and_change_per_epoch():
    groups = ["a"] * 10 + ["b"] * 20 + ["c"] * 4
    weights = {"a": 2.0, "b": 0.25}  # c weighs 1 (not named)
    first = tr.epoch_indices(groups, weights, seed=1, epoch=0)
    counts = {g: sum(groups[i] == g for i in first) for g in "abc"}
    assert counts == {"a": 20, "b": 5, "c": 4}
    assert all(first.count(i) == 2 for i in range(10))  # whole weights: every example that many times
    assert first == tr.epoch_indices(groups, weights, seed=1, epoch=0)  # a resumed run sees the same epoch
    drawn = [sorted(i for i in tr.epoch_indices(groups, weights, seed=1, epoch=e) if groups[i] == "b")
             for e in range(4)]
    assert len({tuple(d) for d in drawn}) > 1  # the fraction is drawn anew each epoch
    assert tr.epoch_indices(groups, {"b": 0.0}, seed=1, epoch=0).count(10) == 0


def test_example_groups_split_off_a_sources_full_sentences_only_when_weighted():
    pairs = [("Das Haus ist rot.", "The house is red."), ("rot", "red"), ("Das Buch ist da.", "The book is here.")]
    sources = ["ding", "ding", "gettext"]
    assert tr.example_groups(sources, pairs, {"ding-sentences": 4}) == ["ding-sentences", "ding", "gettext"]
    assert tr.example_groups(sources, pairs, {}) == sources


def test_source_weights_parse_and_refuse_what_is_not_a_weight(tmp_path: Path):
    assert tr.parse_weights("ding-sentences=4, gettext=0.5") == {"ding-sentences": 4.0, "gettext": 0.5}
    for bad in ("ding", "ding=x", "=2"):
        with pytest.raises(ValueError, match="is not NAME=NUMBER"):
            tr.parse_weights(bad)
    with pytest.raises(ValueError, match="source weight of 'a' must be a number in"):
        tr.TrainConfig(data=tmp_path, vocab=tmp_path, out=tmp_path / "m", source_weights={"a": -1.0})


def test_a_weighted_run_reads_train_source_and_sees_the_weighted_epoch(corpus, tmp_path: Path):
    data, vocab = corpus
    weighted = tmp_path / "data"
    weighted.mkdir()
    for path in data.glob("*.*"):
        if path.is_file():
            (weighted / path.name).write_bytes(path.read_bytes())
    lines = (data / "train.de").read_text().splitlines()
    (weighted / "train.source").write_text("".join(("ding" if i % 2 else "gettext") + "\n"
                                                   for i in range(len(lines))))
    cfg = tiny_config((weighted, vocab), tmp_path / "model", max_steps=2,
                      source_weights={"ding-sentences": 3.0, "gettext": 0.5})
    tr.train(cfg)
    start = next(r for r in read_log(cfg) if r.get("event") == "start")
    groups = start["groups"]
    assert set(groups) <= {"ding", "ding-sentences", "gettext"} and groups.get("ding-sentences", 0) > 0
    expected = groups.get("ding", 0) + 3 * groups["ding-sentences"] + round(0.5 * groups["gettext"])
    assert start["epoch_examples"] == expected
    (weighted / "train.source").write_text("ding\n")
    with pytest.raises(ValueError, match=r"train\.source has 1 lines"):
        tr.train(tiny_config((weighted, vocab), tmp_path / "model2", max_steps=1, source_weights={"ding": 1.0}))


def test_snapshots_keep_the_newest_exports_for_averaging(corpus, tmp_path: Path):
    cfg = tiny_config(corpus, tmp_path / "model", max_steps=8, eval_interval=2, keep_snapshots=2)
    tr.train(cfg)
    kept = sorted(p.name for p in (cfg.state_dir / "snapshots").iterdir())
    assert kept == ["step-0000006", "step-0000008"]
    config, model = load_model(cfg.state_dir / "snapshots" / "step-0000008", device="cpu", dtype="float32")
    assert config.d_model == 32 and isinstance(model, Transformer)
