"""Build tiny but real Marian tokenizer directories (SentencePiece models + Marian vocab files) for tests.

The layout is the one OPUS-MT models ship with on the Hugging Face hub:

- ``source.spm`` / ``target.spm``: two *different* SentencePiece models, one per language side;
- ``vocab.json``: Marian's vocabulary, ``</s>`` = 0, ``<unk>`` = 1, the pieces, ``<pad>`` last. With a
  shared vocabulary it is the union of both sides' pieces (that is how a joint-vocabulary OPUS-MT model
  looks); with ``separate_vocabs=True`` it holds the source pieces only and ``target_vocab.json`` the
  target pieces;
- ``tokenizer_config.json``: languages, and ``separate_vocabs`` when set (Transformers only reads
  ``target_vocab.json`` when that flag says so).

Everything is generated from a fixed seed, so two calls with the same arguments give identical files.
Training both models takes well under a second.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

LANGUAGE_CODES: tuple[str, ...] = (">>deu<<", ">>fra<<")

_EN_SUBJECTS = ["The cat", "My friend", "Our teacher", "A small frog", "The old man", "Tom", "Mary"]
_EN_VERBS = ["eats", "sees", "buys", "likes", "paints", "finds", "sells", "reads"]
_EN_OBJECTS = ["an apple", "the house", "three books", "a red car", "the newspaper", "fresh bread"]
_EN_TAILS = ["today.", "every day!", "in 2024.", "at 10:30?", "(again).", "- maybe.", "for $15.99.", "now;"]
_EN_SYLLABLES = ["ka", "lo", "mi", "tr", "ing", "th", "ers", "ow", "ea", "sh", "pl", "ment", "ion", "ly", "y"]

_DE_SUBJECTS = ["Die Katze", "Mein Freund", "Unser Lehrer", "Ein kleiner Frosch", "Der alte Mann", "Jürgen"]
_DE_VERBS = ["isst", "sieht", "kauft", "mag", "malt", "findet", "verkauft", "liest", "grüßt"]
_DE_OBJECTS = ["einen Apfel", "das Haus", "drei Bücher", "ein rotes Auto", "die Straße", "süßes Brot"]
_DE_TAILS = ["heute.", "jeden Tag!", "im Jahr 2024.", "um 10:30 Uhr?", "„wirklich“.", "für 15,99 €.", "sehr;"]
_DE_SYLLABLES = ["sch", "ü", "ö", "ä", "ß", "ung", "ei", "ch", "keit", "ge", "en", "st", "pf", "au", "zw"]

_FR_SUBJECTS = ["Le chat", "Mon ami", "Notre professeur", "Une petite grenouille", "Le vieil homme", "Hélène"]
_FR_VERBS = ["mange", "voit", "achète", "aime", "peint", "trouve", "vend", "lit", "préfère"]
_FR_OBJECTS = ["une pomme", "la maison", "trois livres", "une voiture rouge", "le café", "du pain frais"]
_FR_TAILS = [
    "aujourd'hui.",
    "chaque jour !",
    "en 2024.",
    "à 10 h 30 ?",
    "« vraiment ».",
    "pour 15,99 €.",
    "où ?",
]
_FR_SYLLABLES = ["é", "è", "ê", "ç", "œ", "eau", "oi", "qu", "ment", "ille", "an", "on", "à", "tion", "gn"]


def _word(rng: random.Random, syllables: Sequence[str]) -> str:
    # Invented words give the trainer enough distinct substrings to reach a few hundred pieces.
    word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
    return word.capitalize() if rng.random() < 0.15 else word


def _sentences(rng: random.Random, parts: Sequence[Sequence[str]], syllables: Sequence[str], n: int) -> list[str]:
    lines = []
    for i in range(n):
        words = [rng.choice(p) for p in parts]
        words[2:2] = [_word(rng, syllables) for _ in range(rng.randint(1, 5))]
        # Numbers and a few odd tokens so that digits and punctuation get their own pieces.
        if i % 5 == 0:
            words.insert(1, str(rng.randint(0, 99999)))
        if i % 7 == 0:
            words.append(rng.choice(["#42", "e-mail", "x@y.z", "3.14", "50%", "1/2", "'quoted'", '"Q"']))
        lines.append(" ".join(words))
    return lines


def source_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """English-ish source sentences with digits and punctuation."""
    parts = [_EN_SUBJECTS, _EN_VERBS, _EN_OBJECTS, _EN_TAILS]
    return _sentences(random.Random(seed), parts, _EN_SYLLABLES, n)


def target_corpus(n: int = 400, seed: int = 1) -> list[str]:
    """German and French target sentences: accents (ü, é, ß, ç), „quotes“, « guillemets », €."""
    rng = random.Random(seed)
    de = _sentences(rng, [_DE_SUBJECTS, _DE_VERBS, _DE_OBJECTS, _DE_TAILS], _DE_SYLLABLES, n // 2)
    fr = _sentences(rng, [_FR_SUBJECTS, _FR_VERBS, _FR_OBJECTS, _FR_TAILS], _FR_SYLLABLES, n - n // 2)
    return [line for pair in zip(de, fr, strict=False) for line in pair] + de[len(fr) :] + fr[len(de) :]


def train_spm(
    lines: Sequence[str],
    *,
    vocab_size: int,
    model_type: str = "unigram",
    byte_fallback: bool = False,
) -> spm.SentencePieceProcessor:
    """Train a SentencePiece model in memory; returns the loaded processor."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        byte_fallback=byte_fallback,
        # Exact sizes, so that separate vocabularies can be made the same size (see build_tokenizer_dir).
        hard_vocab_limit=True,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(buf.getvalue())
    return sp


def _pieces(sp: spm.SentencePieceProcessor) -> list[str]:
    # Marian's vocab.yml lists the spm pieces minus the control symbols; `<unk>` has its fixed slot.
    return [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not (sp.IsControl(i) or sp.IsUnknown(i))]


def marian_vocab(*piece_lists: Sequence[str], extra: Sequence[str] = ()) -> dict[str, int]:
    """A Marian vocabulary: ``</s>`` = 0, ``<unk>`` = 1, ``extra`` tokens, the pieces (deduplicated, in
    order), ``<pad>`` last, as Transformers' Marian conversion writes it."""
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for tokens in (extra, *piece_lists):
        for tok in tokens:
            vocab.setdefault(tok, len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


def build_tokenizer_dir(
    path: str | Path,
    *,
    separate_vocabs: bool = False,
    vocab_size: int = 400,
    model_type: str = "unigram",
    byte_fallback: bool = False,
    language_codes: Sequence[str] = LANGUAGE_CODES,
    tokenizer_config: dict | None = None,
) -> Path:
    """Write a Marian tokenizer directory at ``path`` (created if needed) and return it.

    ``vocab_size`` is the exact SentencePiece size of each side: from ~100 (every character of the corpus
    needs a piece) to ~600 for unigram (BPE goes higher). With ``separate_vocabs`` both vocab.json and
    target_vocab.json then hold ``vocab_size + len(language_codes)`` entries; a shared vocab.json holds
    the union of both sides' pieces (up to about twice that). The ``language_codes`` (OPUS-MT ``>>xxx<<``
    target-language tokens) go into the (source) vocabulary right after ``<unk>``; ``tokenizer_config``
    entries are merged into the written ``tokenizer_config.json``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    kw = {"model_type": model_type, "byte_fallback": byte_fallback}
    src = train_spm(source_corpus(), vocab_size=vocab_size, **kw)
    # HF's Marian converter assumes separate vocabularies of equal size (so that `<pad>`, the last entry,
    # has one id on both sides); the language codes only live in the source vocabulary, so the target
    # model gets that many more pieces.
    tgt_size = vocab_size + len(language_codes) if separate_vocabs else vocab_size
    tgt = train_spm(target_corpus(), vocab_size=tgt_size, **kw)
    (path / "source.spm").write_bytes(src.serialized_model_proto())
    (path / "target.spm").write_bytes(tgt.serialized_model_proto())

    config: dict = {"source_lang": "en", "target_lang": "de"}
    if separate_vocabs:
        vocab = marian_vocab(_pieces(src), extra=language_codes)
        target_vocab = marian_vocab(_pieces(tgt))
        _write_json(path / "target_vocab.json", target_vocab)
        config["separate_vocabs"] = True
    else:
        vocab = marian_vocab(_pieces(src), _pieces(tgt), extra=language_codes)
    _write_json(path / "vocab.json", vocab)
    config.update(tokenizer_config or {})
    _write_json(path / "tokenizer_config.json", config)
    return path


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
