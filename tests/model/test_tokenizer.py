"""mtserve's MarianTokenizer against transformers.MarianTokenizer, on real (tiny) SentencePiece models.

Every directory is built in a temporary folder by ``_tokenizer_fixtures.build_tokenizer_dir``: unigram and
BPE models, shared and separate vocabularies, with and without byte fallback.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import transformers
from _tokenizer_fixtures import (
    LANGUAGE_CODES,
    build_tokenizer_dir,
    source_corpus,
    target_corpus,
    train_spm,
)

from mtserve.model.tokenizers import MarianTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

DIR_KINDS = {
    "unigram-shared": {},
    "unigram-separate": {"separate_vocabs": True},
    "bpe-shared": {"model_type": "bpe", "vocab_size": 300},
    "bpe-separate": {"model_type": "bpe", "separate_vocabs": True, "vocab_size": 500},
    "unigram-bytefallback": {"byte_fallback": True},
}

TEXTS = {
    "accents": "Jürgen grüßt die Straße, Hélène préfère le café à Noël.",
    "digits": "In 2024 kostet es 15,99 € (3.14%) – call 0800-123456!",
    "punctuation": '«Bonjour», „Hallo“, "hi"; (x) [y] {z} ... ?! — #42 @user /path\\',
    "emoji": "emoji 😀 and 🙂🙂 together",
    "cjk": "你好, world 日本語 テスト",
    "unknown-only": "你好😀",
    "empty": "",
    "whitespace-only": "   \t\n ",
    "multiple-spaces": "The  cat    eats   an apple.",
    "leading-trailing": "   The cat eats.   ",
    "tabs-newlines": "line one\nline\ttwo\r\n",
    "nfkc": "ﬁnal ＡＢＣ １２３ e\u0301",
    "zero-width": "a\u200bb \u00a0c",
    "lang-code": ">>deu<< Die Katze isst einen Apfel.",
    "lang-code-no-space": ">>fra<<Le chat mange une pomme.",
    "lang-code-alone": ">>deu<<",
    "lang-code-unknown": ">>xyz<< The cat.",
    "lang-code-with-space": ">> deu << The cat.",
    "lang-code-mid-text": "The cat >>deu<< eats.",
    "lang-code-after-special": "</s>>>deu<< x",
    "literal-specials": "a </s> b<unk>c <pad> d",
    "only-special": "</s>",
    "long": " ".join(source_corpus(60) + target_corpus(60)),
}


@pytest.fixture(scope="module", params=list(DIR_KINDS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(ours, Hugging Face's) tokenizers for one freshly built directory."""
    path = build_tokenizer_dir(tmp_path_factory.mktemp(request.param), **DIR_KINDS[request.param])
    return MarianTokenizer.from_dir(path), transformers.MarianTokenizer.from_pretrained(str(path))


def hf_decode(hf, ids: list[int], skip_special_tokens: bool = True) -> str:
    # use_source_tokenizer=False: the target spm, which ours uses (Transformers 5 defaults to the source
    # spm for shared vocabularies; test_decode_uses_target_spm shows where that matters).
    return hf.decode(ids, skip_special_tokens=skip_special_tokens, use_source_tokenizer=False)


# ---------------------------------------------------------------------- parity with Transformers


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_encode_matches_transformers(pair, text: str) -> None:
    ours, hf = pair
    assert ours.encode(text) == hf(text).input_ids
    assert ours.encode_target(text) == hf(text_target=text).input_ids
    assert ours.tokenize(text) == hf.tokenize(text)


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_decode_matches_transformers(pair, text: str) -> None:
    ours, hf = pair
    ids = hf(text_target=text).input_ids
    assert ours.decode(ids) == hf_decode(hf, ids)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)  # the call users make
    assert ours.decode(ids, skip_special_tokens=False) == hf_decode(hf, ids, skip_special_tokens=False)
    assert ours.target_tokens(ids) == hf.convert_ids_to_tokens(ids)


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzäöüßéèçœ ABCXYZ0123456789.,;:!?'\"-()<>/\\@#€$%&*+=~^ \t\n你好😀ﬁ"
    words = [*source_corpus(40), *target_corpus(40), *LANGUAGE_CODES, "</s>", "<unk>", "<pad>", ">>x<<"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(n)]
    return texts


def test_random_texts_match_transformers(pair) -> None:
    ours, hf = pair
    texts = _random_texts(150, seed=1)
    source = [hf(t).input_ids for t in texts]
    target = [hf(text_target=t).input_ids for t in texts]
    assert ours.encode_batch(texts) == source
    assert ours.encode_target_batch(texts) == target
    assert ours.decode_batch(target) == [hf_decode(hf, ids) for ids in target]
    assert ours.decode_batch(target, skip_special_tokens=False) == [
        hf_decode(hf, ids, skip_special_tokens=False) for ids in target
    ]


def test_random_ids_decode_like_transformers(pair) -> None:
    ours, hf = pair
    rng = random.Random(2)
    for _ in range(300):
        ids = [rng.randrange(ours.target_vocab_size) for _ in range(rng.randint(0, 25))]
        assert ours.decode(ids) == hf_decode(hf, ids), ids
        assert ours.decode(ids, skip_special_tokens=False) == hf_decode(hf, ids, False), ids


def test_special_ids_and_sizes_match_transformers(pair) -> None:
    ours, hf = pair
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id)
    assert (ours.target_pad_id, ours.target_eos_id, ours.target_unk_id) == (ours.pad_id, ours.eos_id, ours.unk_id)
    assert ours.special_ids == set(hf.all_special_ids)
    assert ours.source_vocab_size == hf.vocab_size
    target_vocab = hf.target_encoder if hf.separate_vocabs else hf.encoder
    assert ours.target_vocab_size == len(target_vocab)
    assert ours.separate_vocabs == hf.separate_vocabs
    assert list(ours.language_codes) == hf.supported_language_codes


# ---------------------------------------------------------------------- behaviour, stated directly


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def tok(shared_dir: Path) -> MarianTokenizer:
    return MarianTokenizer.from_dir(shared_dir)


def test_eos_appended_and_empty_inputs(tok: MarianTokenizer) -> None:
    assert tok.eos_id == 0 and tok.unk_id == 1
    assert tok.encode("") == [tok.eos_id]
    assert tok.encode("  \t ") == [tok.eos_id]
    assert tok.encode("The cat eats.")[-1] == tok.eos_id
    assert tok.encode_batch([]) == []
    assert tok.decode([]) == ""


def test_whitespace_is_squeezed(tok: MarianTokenizer) -> None:
    assert tok.encode("  The   cat  eats.  ") == tok.encode("The cat eats.")


def test_unknown_characters_become_unk(tok: MarianTokenizer) -> None:
    ids = tok.encode("The 你好 cat 😀")
    assert ids.count(tok.unk_id) == 2
    # <unk> is dropped as a special token, but the "▁" piece in front of it stays: two spaces, as in HF.
    assert tok.decode(tok.encode_target("Die 你好 Katze")) == "Die  Katze"


def test_language_code_is_one_token(tok: MarianTokenizer, shared_dir: Path) -> None:
    vocab = json.loads((shared_dir / "vocab.json").read_text(encoding="utf-8"))
    ids = tok.encode(">>deu<< The cat")
    assert ids[0] == vocab[">>deu<<"]
    assert ids[1:] == tok.encode("The cat")
    assert tok.encode(">>xyz<< The cat")[0] == tok.unk_id  # cut off whole even when unknown
    assert vocab[">>deu<<"] not in tok.encode("The >>deu<< cat")  # only at the start
    assert tok.language_codes == LANGUAGE_CODES


def test_round_trip_of_target_text(tok: MarianTokenizer) -> None:
    for text in target_corpus(20):
        assert tok.decode(tok.encode_target(text)) == text


def test_decode_drops_pad_eos_unk(tok: MarianTokenizer) -> None:
    ids = tok.encode_target("Die Katze")
    body = ids[:-1]
    assert tok.decode([tok.pad_id, *body, tok.unk_id, tok.eos_id, tok.pad_id]) == "Die Katze"
    assert tok.decode([tok.pad_id, *body, tok.eos_id], skip_special_tokens=False) == "<pad> Die Katze</s>"


def test_decode_accepts_numpy_ints(tok: MarianTokenizer) -> None:
    np = pytest.importorskip("numpy")
    ids = tok.encode_target("Die Katze")
    assert tok.decode(np.array(ids)) == tok.decode(ids) == "Die Katze"


def test_bad_inputs(tok: MarianTokenizer) -> None:
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.encode_batch("not a list")
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        tok.decode([10**6])
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        tok.decode([-1])


def test_fixture_is_deterministic(tmp_path: Path, shared_dir: Path) -> None:
    again = build_tokenizer_dir(tmp_path / "again")
    for name in ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (shared_dir / name).read_bytes(), name


# ---------------------------------------------------------------------- tokenizer_config.json variants


def _variant(src: Path, dst: Path, config: dict | None = None, special_map: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.update(config or {})
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    if special_map is not None:
        (dst / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    return dst


def _added(content: str, special: bool = True, **flags: bool) -> dict:
    return {"content": content, "special": special, "lstrip": False, "rstrip": False, "single_word": False, **flags}


CONFIG_VARIANTS = {
    "additional-special-tokens": {"config": {"additional_special_tokens": ["<eop>", ">>deu<<"]}},
    "extra-special-tokens": {"config": {"extra_special_tokens": ["<eop>"]}},
    "special-tokens-map": {
        "special_map": {
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": {"content": "<pad>"},
            "additional_special_tokens": ["<eop>"],
        },
    },
    "added-tokens-with-strip-flags": {
        "config": {
            "added_tokens_decoder": {
                "0": _added("</s>", lstrip=True, rstrip=True),
                "1": _added("<unk>", single_word=True),
                "5000": _added("<custom>", special=False, rstrip=True),
            }
        }
    },
    "extra-named-tokens": {"config": {"bos_token": "<s>", "mask_token": "<mask>", "lang_token": ">>fra<<"}},
    "clean-up-spaces": {"config": {"clean_up_tokenization_spaces": True}},
    "split-special-tokens": {"config": {"split_special_tokens": True}},
}
VARIANT_TEXTS = [
    "x<custom>y <eop> z", "a  <eop>  b", "<eop>x", "a</s>b", "a </s> b", "hi <unk>there", "<s>a<mask>",
    "Don 't go , ok ? I 'm here .", ">>deu<<<eop> x", ">>fra<< Le chat", "", "</s>",
    "</s> >>deu<< x",  # with rstrip on </s>, the code starts the next segment and is kept whole
]  # fmt: skip


@pytest.mark.parametrize("variant", list(CONFIG_VARIANTS))
def test_tokenizer_config_variants_match_transformers(variant: str, shared_dir: Path, tmp_path: Path) -> None:
    path = _variant(shared_dir, tmp_path / variant, **CONFIG_VARIANTS[variant])
    ours, hf = MarianTokenizer.from_dir(path), transformers.MarianTokenizer.from_pretrained(str(path))
    assert list(ours.special_tokens) == hf.all_special_tokens
    assert ours.special_ids == set(hf.all_special_ids)
    for text in VARIANT_TEXTS:
        ids = hf(text).input_ids
        assert ours.encode(text) == ids, text
        assert ours.encode_target(text) == hf(text_target=text).input_ids, text
        assert ours.decode(ids) == hf_decode(hf, ids), text
        assert ours.decode(ids, skip_special_tokens=False) == hf_decode(hf, ids, False), text


def test_directory_saved_by_transformers(shared_dir: Path, tmp_path: Path) -> None:
    hf = transformers.MarianTokenizer.from_pretrained(str(shared_dir))
    hf.add_tokens(["<custom>"])
    hf.add_special_tokens({"additional_special_tokens": ["<eop>"]})
    hf.save_pretrained(str(tmp_path))
    hf = transformers.MarianTokenizer.from_pretrained(str(tmp_path))
    ours = MarianTokenizer.from_dir(tmp_path)
    for text in VARIANT_TEXTS:
        ids = hf(text).input_ids
        assert ours.encode(text) == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == hf_decode(hf, ids, False), text
        assert ours.decode(ids) == hf_decode(hf, ids), text


def test_target_vocab_ignored_without_separate_vocabs(tmp_path: Path) -> None:
    path = build_tokenizer_dir(tmp_path, separate_vocabs=True, tokenizer_config={"separate_vocabs": False})
    ours, hf = MarianTokenizer.from_dir(path), transformers.MarianTokenizer.from_pretrained(str(path))
    assert not ours.separate_vocabs
    text = "Die Katze isst."
    assert ours.encode_target(text) == hf(text_target=text).input_ids
    assert ours.target_vocab_size == ours.source_vocab_size


# ---------------------------------------------------------------------- deliberate differences from HF 5


def test_decode_uses_target_spm(tmp_path: Path) -> None:
    """A shared vocabulary whose target model has byte fallback and whose source model has not: the
    bytes of an emoji only make sense to target.spm (Transformers 5 decodes with source.spm here and
    returns the literal text ``<0xF0><0x9F>...``)."""
    path = build_tokenizer_dir(tmp_path, byte_fallback=True)
    plain = train_spm(source_corpus(), vocab_size=400)
    (path / "source.spm").write_bytes(plain.serialized_model_proto())
    ours, hf = MarianTokenizer.from_dir(path), transformers.MarianTokenizer.from_pretrained(str(path))
    ids = ours.encode_target("Die Katze 😀")
    assert ids == hf(text_target="Die Katze 😀").input_ids
    assert "<0xF0>" in ours.target_tokens(ids)
    assert ours.decode(ids) == "Die Katze 😀" == hf_decode(hf, ids)


def test_separate_vocabs_of_different_sizes_use_target_special_ids(tmp_path: Path) -> None:
    """HF takes ``<pad>`` from vocab.json on the target side too; with vocabularies of different sizes
    that id is an ordinary target piece (which HF would drop). Here the target side uses the ids of
    target_vocab.json."""
    path = build_tokenizer_dir(tmp_path, separate_vocabs=True)
    target_vocab = json.loads((path / "target_vocab.json").read_text(encoding="utf-8"))
    del target_vocab["<pad>"]
    for i in range(5):
        target_vocab[f"▁extra{i}"] = len(target_vocab)
    target_vocab["<pad>"] = len(target_vocab)
    (path / "target_vocab.json").write_text(json.dumps(target_vocab), encoding="utf-8")

    tok = MarianTokenizer.from_dir(path)
    assert tok.target_pad_id == target_vocab["<pad>"] != tok.pad_id == target_vocab["▁extra0"]
    die = tok.encode_target("Die")[:-1]
    ids = [tok.target_pad_id, *die, tok.pad_id, tok.target_eos_id]
    assert tok.target_tokens(ids)[-2:] == ["▁extra0", "</s>"]
    assert tok.decode(ids) == "Die extra0"
    assert tok.encode_target("Die") == [*die, tok.target_eos_id]


# ---------------------------------------------------------------------- loading errors


def test_missing_files(shared_dir: Path, tmp_path: Path) -> None:
    for name in ("vocab.json", "source.spm", "target.spm"):
        path = tmp_path / name
        shutil.copytree(shared_dir, path)
        (path / name).unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(name)):
            MarianTokenizer.from_dir(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MarianTokenizer.from_dir(tmp_path / "nowhere")


def test_separate_vocabs_without_target_vocab(tmp_path: Path) -> None:
    path = build_tokenizer_dir(tmp_path, separate_vocabs=True)
    (path / "target_vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("target_vocab.json")):
        MarianTokenizer.from_dir(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("source.spm", b"this is not a sentencepiece model", "source.spm is not a valid SentencePiece"),
        ("target.spm", b"\x00\x01\x02garbage", "target.spm is not a valid SentencePiece"),
        ("vocab.json", b'{"</s>": 0, "<unk>": 1', "vocab.json is corrupt"),
        ("vocab.json", b'["</s>", "<unk>"]', "vocab.json is corrupt"),
        ("vocab.json", b'{"</s>": 0, "<unk>": "one"}', "vocab.json is corrupt"),
        ("vocab.json", b'{"</s>": 0, "<pad>": 1}', "'<unk>' is not in vocab.json"),
        ("tokenizer_config.json", b"{not json", "tokenizer_config.json is corrupt"),
    ],
)
def test_corrupt_files(shared_dir: Path, tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / "model"
    shutil.copytree(shared_dir, path)
    (path / name).write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        MarianTokenizer.from_dir(path)
