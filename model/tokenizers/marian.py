"""Marian / OPUS-MT tokenizer: SentencePiece segmentation plus Marian's own vocabulary files.

This reproduces ``transformers.MarianTokenizer`` (the slow, SentencePiece-based one; Marian has no fast
tokenizer) without importing Transformers. What it does, in HF's order:

Encoding (source side, or the target side with :meth:`MarianTokenizer.encode_target`):

1. Split the text on *added tokens* — the special tokens ``</s>``, ``<unk>``, ``<pad>`` (plus any from the
   tokenizer config) — so that a literal ``"</s>"`` in the input becomes the eos id, as in HF.
2. In every other segment, a leading ``>>xxx<<`` (OPUS-MT target-language code) is cut off whole and
   looked up in the vocabulary as one token; the rest goes through SentencePiece (its own NFKC
   normalisation, whitespace squeezing and dummy prefix).
3. Pieces map to ids through ``vocab.json`` (not through SentencePiece ids: Marian's vocab is ordered
   differently), anything missing → ``<unk>``. ``</s>`` is appended.

Decoding (target side): ids → tokens through the target vocabulary (special ids skipped), then the pieces
are joined by SentencePiece's ``decode_pieces`` (pieces it does not know pass through verbatim), ``▁`` →
space, and the result stripped.

Deliberate differences from Transformers 5.x, both outside what real OPUS-MT models exercise:

- Decoding always uses ``target.spm``. Transformers 4.x did too; 5.x switched shared-vocabulary models to
  ``source.spm`` (pass it ``use_source_tokenizer=False`` to compare). With special tokens skipped both
  give the same text unless one model knows a piece (e.g. a byte-fallback ``<0xF0>``) that the other does
  not, and then ``target.spm`` is the one that produced it; with them kept, the spacing after a special
  token can differ as well.
- With separate vocabularies HF takes every special-token id from ``vocab.json``, even on the target side.
  That is harmless when both vocabularies have the same size (what HF's converter writes: ``<pad>`` is
  last in both) but drops or mislabels real target pieces otherwise; here the target side uses the ids
  from ``target_vocab.json``.

``sp_model_kwargs`` (subword sampling) is ignored: sampling segmentations at inference time is never what
a server wants. An instance is immutable after construction and safe to share between threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece

from ..languages import LanguageCodes
from .added_tokens import AddedToken, AddedTokens
from .files import load_json, load_spm

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"

SOURCE_SPM = "source.spm"
TARGET_SPM = "target.spm"
VOCAB = "vocab.json"
TARGET_VOCAB = "target_vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

# Transformers' named special tokens, in the order it lists (and therefore numbers) them.
_SPECIAL_TOKEN_ATTRS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_MARIAN_DEFAULTS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


@dataclass(frozen=True, slots=True)
class _Side:
    """Everything needed to encode into, or decode from, one vocabulary."""

    spm: sentencepiece.SentencePieceProcessor
    vocab: dict[str, int]
    lookup: dict[str, int]  # vocab with the added tokens' ids on top
    spm_to_id: list[int]  # SentencePiece id -> vocab id (<unk> where the piece is not in the vocab)
    id_to_token: list[str]  # vocab id -> token, added tokens included; holes filled as HF would
    far_ids: dict[int, str]  # tokens whose ids lie far past the vocabulary (odd added tokens)
    added_ids: dict[str, int]  # added-token content -> id on this side
    unk_id: int
    eos_id: int
    pad_id: int
    special_ids: frozenset[int]


class MarianTokenizer:
    """Source/target SentencePiece models + Marian vocabularies; see the module docstring."""

    def __init__(
        self,
        source_spm: sentencepiece.SentencePieceProcessor,
        target_spm: sentencepiece.SentencePieceProcessor,
        vocab: Mapping[str, int],
        target_vocab: Mapping[str, int] | None = None,
        tokenizer_config: Mapping[str, Any] | None = None,
        special_tokens_map: Mapping[str, Any] | None = None,
    ) -> None:
        """Build from loaded parts; ``target_vocab`` is used iff the config says ``separate_vocabs``.

        ``tokenizer_config`` / ``special_tokens_map`` are the parsed JSON files of a model directory.
        Prefer :meth:`from_dir`.
        """
        cfg = dict(tokenizer_config or {})
        self.separate_vocabs = bool(cfg.get("separate_vocabs", False))
        if self.separate_vocabs and target_vocab is None:
            raise ValueError(f"separate_vocabs is set but no target vocabulary ({TARGET_VOCAB}) was given")
        self.source_lang: str | None = cfg.get("source_lang")
        self.target_lang: str | None = cfg.get("target_lang")
        self.model_max_length: int = int(cfg.get("model_max_length") or 512)
        self._clean_up_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        self._split_special_tokens = bool(cfg.get("split_special_tokens", False))

        special_tokens, added = _resolve_added_tokens(cfg, special_tokens_map, vocab)
        if special_tokens["unk_token"] not in vocab:
            raise ValueError(f"the unknown token {special_tokens['unk_token']!r} is not in {VOCAB}")
        for attr in ("eos_token", "pad_token"):
            if special_tokens.get(attr) is None:
                raise ValueError(f"tokenizer config sets no {attr}; Marian models need one")
        self.special_tokens: tuple[str, ...] = tuple(special_tokens["all"])
        self._added = AddedTokens(added.values())
        source_added_ids = {tok.content: i for i, tok in added.items()}

        self._source = _build_side(source_spm, dict(vocab), source_added_ids, special_tokens)
        if self.separate_vocabs:
            assert target_vocab is not None
            tvocab = dict(target_vocab)
            # Special tokens take their target-vocabulary id when it has one (see module docstring).
            target_added_ids = {c: tvocab.get(c, i) for c, i in source_added_ids.items()}
            self._target = _build_side(target_spm, tvocab, target_added_ids, special_tokens)
            self.language_codes: tuple[str, ...] = ()
        else:
            if target_vocab is not None:
                logger.warning("%s is ignored: tokenizer config does not set separate_vocabs", TARGET_VOCAB)
            self._target = _build_side(target_spm, self._source.vocab, source_added_ids, special_tokens)
            self.language_codes = tuple(t for t in vocab if t.startswith(">>") and t.endswith("<<"))

        self._special_set = frozenset(self.special_tokens)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dir(cls, path: str | Path) -> MarianTokenizer:
        """Load ``source.spm``, ``target.spm``, ``vocab.json`` (+ ``target_vocab.json`` when the
        ``tokenizer_config.json`` says ``separate_vocabs``) from a Marian model directory."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory {path} does not exist or is not a directory")
        config = load_json(path / TOKENIZER_CONFIG) if (path / TOKENIZER_CONFIG).is_file() else {}
        if not isinstance(config, dict):
            raise ValueError(f"{path / TOKENIZER_CONFIG} is corrupt: expected a JSON object")
        special_map = load_json(path / SPECIAL_TOKENS_MAP) if (path / SPECIAL_TOKENS_MAP).is_file() else None
        if special_map is not None and not isinstance(special_map, dict):
            raise ValueError(f"{path / SPECIAL_TOKENS_MAP} is corrupt: expected a JSON object")
        target_vocab = None
        if config.get("separate_vocabs"):
            target_vocab = _load_vocab(path / TARGET_VOCAB)
        elif (path / TARGET_VOCAB).is_file():
            logger.warning("%s ignored: %s does not set separate_vocabs", path / TARGET_VOCAB, TOKENIZER_CONFIG)
        return cls(
            source_spm=load_spm(path / SOURCE_SPM),
            target_spm=load_spm(path / TARGET_SPM),
            vocab=_load_vocab(path / VOCAB),
            target_vocab=target_vocab,
            tokenizer_config=config,
            special_tokens_map=special_map,
        )

    # ------------------------------------------------------------------ properties

    @property
    def pad_id(self) -> int:
        """Source-side ``<pad>`` id (HF's ``pad_token_id``; also Marian's ``decoder_start_token_id``)."""
        return self._source.pad_id

    @property
    def eos_id(self) -> int:
        return self._source.eos_id

    @property
    def unk_id(self) -> int:
        return self._source.unk_id

    @property
    def target_pad_id(self) -> int:
        """``<pad>`` in the target vocabulary; equals :attr:`pad_id` unless vocabularies are separate."""
        return self._target.pad_id

    @property
    def target_eos_id(self) -> int:
        return self._target.eos_id

    @property
    def target_unk_id(self) -> int:
        return self._target.unk_id

    @property
    def source_vocab_size(self) -> int:
        """Entries in ``vocab.json`` (HF's ``vocab_size``; added tokens outside it not counted)."""
        return len(self._source.vocab)

    @property
    def target_vocab_size(self) -> int:
        return len(self._target.vocab)

    @property
    def special_ids(self) -> frozenset[int]:
        """Target-side ids that :meth:`decode` drops (eos, unk, pad and any extra special tokens)."""
        return self._target.special_ids

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, source_language: str | None = None, target_language: str | None = None) -> list[int]:
        """Source-side ids of ``text``, ending with ``</s>``. In a multi-target model a `target_language`
        (one of its ``>>xxx<<`` codes) goes in front, as OPUS-MT's model cards tell users to write it;
        `source_language` only names what the model was trained on."""
        del source_language
        if target_language and target_language in self.language_codes:
            text = f"{target_language} {text}"
        return self._encode_many([text], self._source)[0]

    def target_prefix(self, target_language: str | None) -> tuple[int, ...]:
        """Nothing: a Marian model's target language is a source token (see :meth:`encode`)."""
        return ()

    def encode_prefix(self, text: str) -> list[int]:
        """Target-side ids of `text` without the ``</s>`` :meth:`encode_target` ends with."""
        return self.encode_target(text)[:-1]

    # The language pair is the model's (or a >>xxx<< token the text may carry itself).
    needs_source_language = False
    needs_target_language = False

    @property
    def source_languages(self) -> LanguageCodes:
        """The declared source language (tokenizer_config's source_lang), if any."""
        return LanguageCodes([self.source_lang or ""])

    @property
    def target_languages(self) -> LanguageCodes:
        """A multi-target model's ``>>xxx<<`` codes, else the declared target language, if any."""
        return LanguageCodes(self.language_codes or [self.target_lang or ""])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts."""
        return self._encode_many(texts, self._source)

    def encode_target(self, text: str) -> list[int]:
        """Target-side ids (training labels), as HF's ``tokenizer(text_target=text)``; ends with ``</s>``."""
        return self._encode_many([text], self._target)[0]

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._encode_many(texts, self._target)

    def tokenize(self, text: str) -> list[str]:
        """Source-side tokens of ``text`` without ``</s>`` (HF's ``tokenize``), for debugging."""
        out: list[str] = []
        for seg in self._plan(text, self._source):
            if isinstance(seg, str):
                out.extend(self._source.spm.encode(seg, out_type=str))
            else:
                out.append(seg[1])
        return out

    def _encode_many(self, texts: Sequence[str], side: _Side) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("expected a sequence of strings, got one str")
        plans = [self._plan(text, side) for text in texts]
        segments = [seg for plan in plans for seg in plan if isinstance(seg, str)]
        # One call per segment: SentencePiece's list form starts a thread pool per call, which costs
        # ~100 µs, more than encoding a typical sentence (~2 µs).
        encode = side.spm.encode
        spm_ids = [encode(seg) for seg in segments]
        spm_unk = side.spm.unk_id()
        table, lookup, unk = side.spm_to_id, side.lookup, side.unk_id
        k = 0
        results = []
        for plan in plans:
            ids: list[int] = []
            for seg in plan:
                if not isinstance(seg, str):
                    ids.append(seg[0])
                    continue
                pieces = spm_ids[k]
                k += 1
                if spm_unk in pieces:
                    # An unknown piece's id says nothing about its text, and HF looks the *text* up in
                    # vocab.json (which may hold it); only then is the slower string path needed.
                    ids.extend([lookup.get(p, unk) for p in side.spm.encode(seg, out_type=str)])
                else:
                    ids.extend([table[i] for i in pieces])
            ids.append(side.eos_id)
            results.append(ids)
        return results

    def _plan(self, text: str, side: _Side) -> list[str | tuple[int, str]]:
        """Split ``text`` into SentencePiece segments (str) and whole tokens ((id, token)), in order."""
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        if self._split_special_tokens or not self._added.occur_in(text):
            parts = [text]
            added: AddedTokens | frozenset[str] = frozenset()
        else:
            parts = self._added.split(text)
            added = self._added
        plan: list[str | tuple[int, str]] = []
        for part in parts:
            if not part:
                continue
            if part in added:
                plan.append((side.added_ids[part], part))
                continue
            # remove_language_code: only a code at the very start of a segment, and it is kept whole
            # even when it is not in the vocabulary (then it becomes <unk>).
            if part.startswith(">>") and (end := part.find("<<")) != -1:
                code = part[: end + 2]
                plan.append((side.lookup.get(code, side.unk_id), code))
                part = part[end + 2 :]
            if part:
                plan.append(part)
        return plan

    # ------------------------------------------------------------------ decoding

    def vocabulary(self, side: str) -> dict[str, int]:
        """Token → id of the source or the target vocabulary, added tokens included."""
        return dict({"source": self._source, "target": self._target}[side].lookup)

    def target_tokens(self, ids: Iterable[int]) -> list[str]:
        """Target-side tokens of ``ids``, special ones included (HF's ``convert_ids_to_tokens``)."""
        return self._ids_to_tokens(ids, frozenset())

    def source_pieces(self, text: str, source_language: str | None = None,
                      target_language: str | None = None) -> list[str]:
        """One string per id of :meth:`encode`: SentencePiece's own pieces (as many as its ids, an unknown
        one's text included), the added tokens, and ``</s>``."""
        del source_language
        if target_language and target_language in self.language_codes:
            text = f"{target_language} {text}"
        pieces: list[str] = []
        for segment in self._plan(text, self._source):
            if isinstance(segment, str):
                pieces += self._source.spm.encode(segment, out_type=str)
            else:
                pieces.append(segment[1])
        return [*pieces, "</s>"]

    def decode_replacing_unknowns(self, ids: Sequence[int], source_pieces: Sequence[str],
                                  alignment: Sequence[int]) -> str:
        target = self._target
        tokens = []
        for position, (token_id, token) in enumerate(zip(ids, self.target_tokens(ids), strict=True)):
            if token_id == target.unk_id:
                piece = source_pieces[alignment[position]]
                if piece not in self._special_set:
                    tokens.append(piece)
            elif token_id not in target.special_ids:
                tokens.append(token)
        return self._tokens_to_string(tokens)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Target-side text of ``ids``, as HF's ``decode(ids, skip_special_tokens=True)``: drops eos,
        pad and unk (and any other special token)."""
        skip = self._target.special_ids if skip_special_tokens else frozenset()
        return self._tokens_to_string(self._ids_to_tokens(ids, skip))

    def decode_batch(self, batch: Iterable[Iterable[int]], *, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    def _ids_to_tokens(self, ids: Iterable[int], skip: frozenset[int]) -> list[str]:
        table = self._target.id_to_token
        n = len(table)
        # int() accepts numpy / 0-d torch integers too.
        return [table[i] if 0 <= i < n else self._token_outside_vocab(i) for i in map(int, ids) if i not in skip]

    def _token_outside_vocab(self, i: int) -> str:
        # HF falls back to the SentencePiece piece with that number (unrelated to Marian's numbering, but
        # that is what it does) and raises for ids SentencePiece does not have either.
        if i in self._target.far_ids:
            return self._target.far_ids[i]
        sp = self._target.spm
        if 0 <= i < sp.GetPieceSize():
            return sp.IdToPiece(i) or self._target.id_to_token[self._target.unk_id]
        raise ValueError(f"token id {i} is outside the target vocabulary (size {self.target_vocab_size})")

    def _tokens_to_string(self, tokens: list[str]) -> str:
        sp = self._target.spm
        if self._special_set.isdisjoint(tokens):
            text = sp.decode_pieces(tokens)
        else:
            # Special tokens are not SentencePiece pieces: keep them verbatim, each followed by a space.
            text, run = "", []
            for tok in tokens:
                if tok in self._special_set:
                    text += sp.decode_pieces(run) + tok + " "
                    run = []
                else:
                    run.append(tok)
            text += sp.decode_pieces(run)
        # Pieces SentencePiece does not know come back verbatim, ▁ included.
        text = text.replace(SPIECE_UNDERLINE, " ").strip()
        return _clean_up_tokenization(text) if self._clean_up_spaces else text


# ---------------------------------------------------------------------- helpers


def _build_side(
    sp: sentencepiece.SentencePieceProcessor,
    vocab: dict[str, int],
    added_ids: dict[str, int],
    special_tokens: dict[str, Any],
) -> _Side:
    unk_token = special_tokens["unk_token"]
    unk = added_ids[unk_token]
    # HF looks every token up in its added tokens first, then in the vocabulary.
    lookup = {**vocab, **added_ids}
    spm_to_id = [lookup.get(sp.IdToPiece(i), unk) for i in range(sp.GetPieceSize())]
    by_id = {i: tok for tok, i in lookup.items()}
    # A list for the (dense) vocabulary, a dict for stray ids far beyond it, so that a corrupt or odd
    # numbering cannot make the table huge.
    size = max(i for i in by_id if i < 2 * len(by_id) + 1024) + 1
    id_to_token = [
        by_id.get(i) or (sp.IdToPiece(i) if i < sp.GetPieceSize() else "") or unk_token for i in range(size)
    ]  # a hole in the numbering: HF asks SentencePiece, then falls back to <unk>
    far_ids = {i: tok for i, tok in by_id.items() if i >= size}
    return _Side(
        spm=sp,
        vocab=vocab,
        lookup=lookup,
        spm_to_id=spm_to_id,
        id_to_token=id_to_token,
        far_ids=far_ids,
        added_ids=added_ids,
        unk_id=unk,
        eos_id=added_ids[special_tokens["eos_token"]],
        pad_id=added_ids[special_tokens["pad_token"]],
        special_ids=frozenset(added_ids[t] for t in special_tokens["all"]),
    )


def _token_content(value: Any) -> str | None:
    """A special token as written in a tokenizer config: a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        return str(value["content"])
    return str(value)


def _resolve_added_tokens(
    cfg: dict[str, Any], special_map: Mapping[str, Any] | None, vocab: Mapping[str, int]
) -> tuple[dict[str, Any], dict[int, AddedToken]]:
    """Mirror how Transformers 5 turns tokenizer_config.json / special_tokens_map.json into special
    tokens and numbered added tokens. Returns ({attr: content, ..., "all": [contents]}, {id: token})."""
    if "additional_special_tokens" in cfg and not cfg.get("extra_special_tokens"):
        cfg["extra_special_tokens"] = cfg.pop("additional_special_tokens")

    added: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in cfg:
        for idx, spec in cfg["added_tokens_decoder"].items():
            spec = spec if isinstance(spec, dict) else {"content": spec}
            added[int(idx)] = AddedToken(
                content=str(spec["content"]),
                special=bool(spec.get("special", False)),
                lstrip=bool(spec.get("lstrip", False)),
                rstrip=bool(spec.get("rstrip", False)),
                single_word=bool(spec.get("single_word", False)),
            )
    elif special_map:
        # Legacy file, only read by HF when the config has no added_tokens_decoder.
        for key, value in special_map.items():
            if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                existing = list(cfg.get("extra_special_tokens") or [])
                existing += [v for v in value if _token_content(v) not in map(_token_content, existing)]
                cfg["extra_special_tokens"] = existing
            else:
                cfg[key] = value

    named: dict[str, Any] = {}
    for attr in _SPECIAL_TOKEN_ATTRS:
        named[attr] = _token_content(cfg.get(attr, _MARIAN_DEFAULTS.get(attr)))
    extras = cfg.get("extra_special_tokens") or []
    # Model-specific named tokens ("<something>_token" keys) are special too in Transformers 5.
    for key, value in cfg.items():
        if key.endswith("_token") and key not in named and isinstance(value, str):
            named[key] = value
    if isinstance(extras, dict):
        named.update({k: _token_content(v) for k, v in extras.items()})
        extras = []

    all_tokens: list[str] = []
    for content in [*named.values(), *map(_token_content, extras)]:
        if content is not None and content not in all_tokens:
            all_tokens.append(content)
    named["all"] = all_tokens

    # Special tokens not yet numbered take their vocab id, or new ids after the vocabulary.
    added_ids = {tok.content: i for i, tok in added.items()}
    known = {**vocab, **added_ids}
    next_id = len(known)
    for content in all_tokens:
        if content in added_ids:
            continue
        if content in known:
            idx = known[content]
        else:
            idx, next_id = next_id, next_id + 1
        added[idx] = AddedToken(content=content, special=True)
        added_ids[content] = idx
    return named, added


def _clean_up_tokenization(text: str) -> str:
    """HF's ``clean_up_tokenization``; only used when the tokenizer config asks for it."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _load_vocab(path: Path) -> dict[str, int]:
    vocab = load_json(path)
    if not isinstance(vocab, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()
    ):
        raise ValueError(f"{path} is corrupt: expected a JSON object mapping tokens to non-negative ids")
    return vocab
