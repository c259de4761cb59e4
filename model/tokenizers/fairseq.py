"""NLLB-200, M2M100 and MBart-50 tokenizers: one SentencePiece model, fairseq's dictionary, language tokens.

All three number tokens the fairseq way (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then the pieces)
and mark the language with a token: the source is ``[src_lang] text </s>`` and the output starts with
the target-language token, forced at the first step (Transformers' ``forced_bos_token_id``). Where the
numbers come from differs, and is read from the files each model ships with, never from a table here:

============  ==========================================  ==============================================
family        piece ids                                   language codes and their ids
============  ==========================================  ==============================================
NLLB-200      tokenizer.json's vocabulary (= spm id + 1)  tokenizer.json's added tokens (``deu_Latn``)
MBart-50      the same                                    the same (``de_DE``)
M2M100        vocab.json, in an order unlike the spm's    tokenizer_config/special_tokens_map order,
                                                          numbered from len(vocab.json) (``__de__``)
============  ==========================================  ==============================================

Without a tokenizer.json, NLLB and MBart-50 fall back to what Transformers' converter does: spm id + 1,
codes numbered from the spm size + 1 in the order the tokenizer config lists them.

Encoding follows Transformers: the text is split on added tokens first (added_tokens.py), and NLLB's
``legacy_behaviour`` puts the code after ``</s>``. NLLB and MBart-50 load as ``tokenizers``-backed fast
tokenizers in Transformers, whose Metaspace pre-tokenizer turns whitespace at the end of a run of text
into a ``▁`` piece of its own; SentencePiece drops it. Between added tokens that piece is kept (as
Transformers gives it) unless the tokenizer.json's normalizer strips each run on the right (what
Transformers 5.25 writes for MBart-50); at the end of the text the text is stripped instead, as the issue
asks: trailing whitespace changes no translation. Decoding drops every special token (language codes anywhere,
``<unk>``, ``<mask>``) and ids without a token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece

from ..languages import LanguageCodes, is_language_code
from .added_tokens import AddedToken, AddedTokens
from .files import load_json_object, load_spm

log = logging.getLogger(__name__)

SPM_FILE = "sentencepiece.bpe.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
VOCAB = "vocab.json"
SPIECE_UNDERLINE = "▁"
_FAIRSEQ_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


class FairseqTokenizer:
    """See the module docstring. Immutable after construction and safe to share between threads."""

    def __init__(
        self,
        spm: sentencepiece.SentencePieceProcessor,
        piece_ids: Mapping[str, int],
        added: Sequence[tuple[int, AddedToken]],
        codes: Mapping[str, int],
        *,
        vocab_size: int,
        legacy_behaviour: bool = False,
        whitespace_piece: bool = True,
        metaspace_decoder: bool = True,
        clean_up_spaces: bool = False,
    ) -> None:
        """`piece_ids`: SentencePiece piece → model id; `added`: the tokens matched whole in the text with
        their ids (specials and codes); `codes`: language code → id. `whitespace_piece`: the fast
        tokenizers' trailing ``▁`` between added tokens (module docstring); `metaspace_decoder`: decode as the
        fast tokenizers do (▁ is a space), else as M2M100's Python tokenizer."""
        self._spm = spm
        self._added = AddedTokens(token for _, token in added)
        self._added_ids = {token.content: index for index, token in added}
        self.codes = dict(codes)
        self.languages = LanguageCodes(self.codes)
        ids = self._added_ids
        missing = [token for token in ("</s>", "<unk>", "<pad>") if token not in ids and token not in piece_ids]
        if missing:
            raise ValueError(f"the tokenizer files define no {', '.join(missing)}")
        self.eos_id = ids.get("</s>", piece_ids.get("</s>", 2))
        self.unk_id = ids.get("<unk>", piece_ids.get("<unk>", 3))
        self.pad_id = ids.get("<pad>", piece_ids.get("<pad>", 1))
        self.legacy_behaviour = legacy_behaviour
        self._whitespace_piece = whitespace_piece
        self._metaspace_decoder = metaspace_decoder
        self._clean_up_spaces = clean_up_spaces
        self._vocab_size = vocab_size
        unk = self.unk_id
        self._spm_to_id = [piece_ids.get(spm.IdToPiece(i), unk) for i in range(spm.GetPieceSize())]
        self._space_id = piece_ids.get(SPIECE_UNDERLINE, unk)
        self._piece_of: dict[int, str] = {index: piece for piece, index in piece_ids.items()}
        self.special_ids = frozenset(index for index, token in added if token.special)

    # -- what a request may ask for ----------------------------------------------------------------

    @property
    def source_languages(self) -> LanguageCodes:
        return self.languages

    @property
    def target_languages(self) -> LanguageCodes:
        return self.languages

    needs_source_language = True  # the encoder reads the source language's token
    needs_target_language = True  # and nothing but the forced first token says where to go

    @property
    def source_vocab_size(self) -> int:
        return self._vocab_size

    @property
    def target_vocab_size(self) -> int:
        return self._vocab_size

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, text: str, source_language: str | None = None, target_language: str | None = None) -> list[int]:
        """Source ids: ``[code] pieces </s>`` (``pieces </s> [code]`` with legacy_behaviour). Without a
        source language there is no code (what Transformers does with ``src_lang=None``)."""
        del target_language  # the target language is the forced first output token, not a source token
        body = self._pieces(text.rstrip() if self._whitespace_piece else text)
        code = [self._code_id(source_language)] if source_language else []
        return [*body, self.eos_id, *code] if self.legacy_behaviour else [*code, *body, self.eos_id]

    def target_prefix(self, target_language: str | None) -> tuple[int, ...]:
        """The tokens every translation into `target_language` starts with: its code."""
        return (self._code_id(target_language),) if target_language else ()

    def encode_prefix(self, text: str) -> list[int]:
        """Target pieces of `text` (source and target share the vocabulary), no language code, no </s>."""
        return self._pieces(text)

    def _code_id(self, code: str) -> int:
        if code not in self.codes:
            raise ValueError(f"{code!r} is not one of the tokenizer's language codes")
        return self.codes[code]

    def _pieces(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        if not self._added.occur_in(text):
            return [self._spm_to_id[i] for i in self._spm.encode(text)]
        ids: list[int] = []
        parts = self._added.split(text)
        for k, part in enumerate(parts):
            if part in self._added:
                ids.append(self._added_ids[part])
                continue
            ids.extend(self._spm_to_id[i] for i in self._spm.encode(part))
            if self._whitespace_piece and k + 1 < len(parts) and part[-1].isspace():
                ids.append(self._space_id)
        return ids

    # -- decoding ----------------------------------------------------------------------------------

    def vocabulary(self, side: str) -> dict[str, int]:
        """Token → id (one vocabulary for both sides): the pieces, the special tokens and language codes."""
        del side
        return {**{piece: index for index, piece in self._piece_of.items()}, **self._added_ids}

    def target_tokens(self, ids: Iterable[int]) -> list[str]:
        """The token of each id (one vocabulary for both sides), special ones and language codes included."""
        names = {**{i: c for c, i in self.codes.items()}, **{i: t for t, i in _FAIRSEQ_SPECIALS.items()}}
        return [self._piece_of.get(i) or names.get(i, "<unk>") for i in map(int, ids)]

    def source_pieces(self, text: str, source_language: str | None = None,
                      target_language: str | None = None) -> list[str]:
        """One string per id of :meth:`encode`; SentencePiece's own pieces where no added token occurs
        (so an unknown piece keeps its text), else the tokens of the ids."""
        ids = self.encode(text, source_language, target_language)
        body = text.rstrip() if self._whitespace_piece else text
        if self._added.occur_in(body):
            return self.target_tokens(ids)
        pieces = self._spm.encode(body, out_type=str)
        code = [source_language] if source_language else []
        layout = [*pieces, "</s>", *code] if self.legacy_behaviour else [*code, *pieces, "</s>"]
        return layout if len(layout) == len(ids) else self.target_tokens(ids)

    def decode_replacing_unknowns(self, ids: Sequence[int], source_pieces: Sequence[str],
                                  alignment: Sequence[int]) -> str:
        pieces: list[str] = []
        for position, token_id in enumerate(map(int, ids)):
            if token_id == self.unk_id:
                piece = source_pieces[alignment[position]]
                if piece != "</s>" and piece not in self.codes:
                    pieces.append(piece)
            elif token_id not in self.special_ids and token_id in self._piece_of:
                pieces.append(self._piece_of[token_id])
        if self._whitespace_piece:
            text = "".join(pieces).replace(SPIECE_UNDERLINE, " ")
            text = text[1:] if text.startswith(" ") else text
        else:
            text = self._spm.decode_pieces(pieces).strip()
        return _clean_up_tokenization(text) if self._clean_up_spaces else text

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """The text of output ids, as Transformers' ``decode(ids, skip_special_tokens=True)``."""
        del skip_special_tokens  # always: a translation never shows its control tokens
        special, piece_of = self.special_ids, self._piece_of
        if self._metaspace_decoder:
            # The fast tokenizers' Metaspace decoder: ▁ is a space, the first one dropped, nothing stripped.
            text = "".join(piece_of[i] for i in map(int, ids) if i not in special and i in piece_of)
            text = text.replace(SPIECE_UNDERLINE, " ")
            text = text[1:] if text.startswith(" ") else text
        else:
            # M2M100's Python tokenizer: SentencePiece decodes each run of pieces; an id with no piece (its
            # madeupword rows) is written as "<unk>" between the runs, and the whole is stripped.
            runs: list[list[str]] = [[]]
            for i in map(int, ids):
                if i in special:
                    continue
                if i in piece_of:
                    runs[-1].append(piece_of[i])
                elif 0 <= i < self._vocab_size:
                    runs.append([])
            text = "<unk>".join(self._spm.decode_pieces(run) for run in runs).strip()
        return _clean_up_tokenization(text) if self._clean_up_spaces else text

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path, model_type: str, vocab_size: int) -> FairseqTokenizer:
        """Load the tokenizer of an NLLB/MBart-50 (``model_type`` m2m_100 or mbart with a tokenizer.json or
        an spm alone) or M2M100 (vocab.json) directory; `vocab_size` is the model's embedding rows."""
        path = Path(path)
        config = load_json_object(path / TOKENIZER_CONFIG) if (path / TOKENIZER_CONFIG).is_file() else {}
        spm = load_spm(path / SPM_FILE)
        options = {
            "vocab_size": vocab_size,
            "legacy_behaviour": bool(config.get("legacy_behaviour", False)),
            "clean_up_spaces": bool(config.get("clean_up_tokenization_spaces", False)),
        }
        if (path / TOKENIZER_JSON).is_file():
            piece_ids, added = _from_tokenizer_json(path / TOKENIZER_JSON)
            # Tokenizers written by Transformers 5.25 and later strip each run of text on the right before
            # the Metaspace pre-tokenizer, so no run ends in a ▁ of its own.
            options["whitespace_piece"] = not _strips_right(load_json_object(path / TOKENIZER_JSON))
        elif (path / VOCAB).is_file():  # M2M100: a Python tokenizer in Transformers, no ▁ rule
            piece_ids, added = _from_vocab_json(path, config, spm)
            options["whitespace_piece"] = options["metaspace_decoder"] = False
        else:
            piece_ids, added = _from_spm(path, config, spm)
        codes = {token.content: index for index, token in added if token.special and is_language_code(token.content)}
        if not codes:
            raise ValueError(f"{path}: the tokenizer files list no language codes ({model_type} models need them)")
        for index in (*piece_ids.values(), *(i for i, _ in added)):
            if not 0 <= index < vocab_size:
                raise ValueError(f"{path}: token id {index} is outside the model's vocabulary (size {vocab_size})")
        return cls(spm, piece_ids, added, codes, **options)


# -- the three sources of ids ------------------------------------------------------------------------


def _strips_right(data: Mapping[str, Any]) -> bool:
    """Whether tokenizer.json's normalizer (alone or in a Sequence) strips whitespace on the right."""
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers") or [] if normalizer.get("type") == "Sequence" else [normalizer]
    return any(step.get("type") == "Strip" and step.get("strip_right") for step in steps if isinstance(step, dict))


def _from_tokenizer_json(file: Path) -> tuple[dict[str, int], list[tuple[int, AddedToken]]]:
    data = load_json_object(file)
    model = data.get("model") or {}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE: piece → id
        piece_ids = {str(piece): int(index) for piece, index in vocab.items()}
    elif isinstance(vocab, list):  # Unigram: [piece, score] in id order
        piece_ids = {str(entry[0]): index for index, entry in enumerate(vocab)}
    else:
        raise ValueError(f"{file}: no model.vocab (a {model.get('type')!r} model)")
    added = [
        (int(entry["id"]), AddedToken(
            str(entry["content"]), special=bool(entry.get("special", False)), lstrip=bool(entry.get("lstrip")),
            rstrip=bool(entry.get("rstrip")), single_word=bool(entry.get("single_word")),
        ))
        for entry in data.get("added_tokens") or []
    ]  # fmt: skip
    return piece_ids, added


def _listed_specials(path: Path, config: Mapping[str, Any]) -> list[str]:
    """The additional special tokens a tokenizer config (or special_tokens_map.json) lists, in order."""
    listed: list[Any] = []
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(config.get(key), list):
            listed += config[key]
    if not listed and (path / SPECIAL_TOKENS_MAP).is_file():
        listed = list(load_json_object(path / SPECIAL_TOKENS_MAP).get("additional_special_tokens") or [])
    contents = [str(t["content"]) if isinstance(t, dict) else str(t) for t in listed]
    return list(dict.fromkeys(contents))


def _from_vocab_json(
    path: Path, config: Mapping[str, Any], spm: sentencepiece.SentencePieceProcessor
) -> tuple[dict[str, int], list[tuple[int, AddedToken]]]:
    """M2M100: pieces through vocab.json; the codes follow the vocabulary (then Transformers' 8
    ``madeupword`` ids, which no file lists and nothing decodes)."""
    vocab = load_json_object(path / VOCAB)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise ValueError(f"{path / VOCAB} is corrupt: expected a JSON object mapping tokens to ids")
    codes = [c for c in _listed_specials(path, config) if is_language_code(c)]
    added = [(vocab[token], AddedToken(token)) for token in _FAIRSEQ_SPECIALS if token in vocab]
    added += [(len(vocab) + i, AddedToken(code)) for i, code in enumerate(codes)]
    del spm  # segmentation only: its ids are not the model's
    return dict(vocab), added


def _from_spm(
    path: Path, config: Mapping[str, Any], spm: sentencepiece.SentencePieceProcessor
) -> tuple[dict[str, int], list[tuple[int, AddedToken]]]:
    """NLLB/MBart-50 without tokenizer.json: Transformers' conversion (fairseq offset 1, codes after the pieces)."""
    size = spm.GetPieceSize()
    piece_ids = {spm.IdToPiece(i): i + 1 for i in range(size) if not (spm.IsControl(i) or spm.IsUnknown(i))}
    added = [(index, AddedToken(token)) for token, index in _FAIRSEQ_SPECIALS.items()]
    codes = [c for c in _listed_specials(path, config) if is_language_code(c)]
    added += [(size + 1 + i, AddedToken(code)) for i, code in enumerate(codes)]
    added.append((size + 1 + len(codes), AddedToken("<mask>", lstrip=True)))
    return piece_ids, added


# -- files ---------------------------------------------------------------------------------------------


def _clean_up_tokenization(text: str) -> str:
    """Transformers' ``clean_up_tokenization``, for tokenizer configs that ask for it."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
