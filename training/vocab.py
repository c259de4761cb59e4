"""A joint SentencePiece vocabulary in the Hugging Face Marian layout.

One unigram model is trained on both sides of the training split and written
twice, as ``source.spm`` and ``target.spm``; ``vocab.json`` maps piece → id the
way OPUS-MT models have it: ``</s>`` is 0, ``<unk>`` is 1 and ``<pad>`` is the
last id (pad doubles as ``decoder_start_token_id``).

Digits are split (``split_digits``: every number is spelled digit by digit, so that the model copies
numbers it has never seen instead of mapping them to a similar-looking frequent piece such as ``▁2000``),
and all ten digits are required characters, so each is a piece whatever the training text holds. That is
the default for new vocabularies; the bundled model's vocabulary was trained before, without it.

The SentencePiece model is trained with exactly those ids for ``</s>`` and
``<unk>`` and without pad or bos, so that every SentencePiece id equals its
``vocab.json`` id and pad is the one id SentencePiece never produces. The size
given is the total, pad included.

CLI: ``python -m mtserve.training.vocab --data DIR --out DIR [--size 8000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from mtserve.model.tokenizers import MarianTokenizer

EOS, UNK, PAD = "</s>", "<unk>", "<pad>"
FILES = ("source.spm", "target.spm", "vocab.json")
DIGITS = "0123456789"


def train_vocab(
    inputs: Sequence[Path],
    out_dir: Path,
    size: int = 8000,
    *,
    character_coverage: float = 0.9999,
    max_sentences: int = 2_000_000,
    threads: int | None = None,
    seed: int = 1,
    split_digits: bool = True,
) -> Path:
    """Train the joint unigram model on ``inputs`` (plain text, one segment a line) into ``out_dir``.

    ``split_digits`` (the default) splits numbers into single digits and makes 0–9 pieces of their own.
    """
    if size < 8:
        raise ValueError(f"vocabulary size {size} is too small")
    out_dir.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "joint"
        spm.SentencePieceTrainer.train(
            input=[str(p) for p in inputs],
            model_prefix=str(prefix),
            model_type="unigram",
            vocab_size=size - 1,  # the last id is <pad>, which SentencePiece does not hold
            eos_id=0,
            unk_id=1,
            bos_id=-1,
            pad_id=-1,
            eos_piece=EOS,
            unk_piece=UNK,
            character_coverage=character_coverage,
            split_digits=split_digits,
            # Every digit is a piece even if rare in the text: with split digits, a missing one would be <unk>.
            required_chars=DIGITS if split_digits else "",
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=threads or os.cpu_count() or 1,
            minloglevel=2,
        )
        model = prefix.with_suffix(".model")
        for name in ("source.spm", "target.spm"):
            shutil.copyfile(model, out_dir / name)
    write_vocab_json(out_dir / "source.spm", out_dir / "vocab.json")
    return out_dir


def write_vocab_json(spm_path: Path, out: Path) -> dict[str, int]:
    """``vocab.json`` for a SentencePiece model: its own ids, plus ``<pad>`` after the last."""
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    if sp.id_to_piece(0) != EOS or sp.id_to_piece(1) != UNK:
        raise ValueError(f"{spm_path}: ids 0 and 1 must be {EOS} and {UNK}")
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab[PAD] = len(vocab)
    out.write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    return vocab


def write_tokenizer_config(out_dir: Path, source_lang: str = "de", target_lang: str = "en") -> None:
    """The ``tokenizer_config.json`` that lets ``MarianTokenizer.from_pretrained`` load the directory."""
    config = {
        "tokenizer_class": "MarianTokenizer",
        "source_lang": source_lang,
        "target_lang": target_lang,
        "separate_vocabs": False,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "model_max_length": 512,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def copy_vocab(vocab_dir: Path, model_dir: Path) -> None:
    """Copy the tokenizer files next to a model, as the Marian layout has them."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(vocab_dir / name, model_dir / name)
    write_tokenizer_config(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with train.de and train.en")
    parser.add_argument("--out", type=Path, required=True, help="where source.spm, target.spm, vocab.json go")
    parser.add_argument("--size", type=int, default=8000, help="total vocabulary size, <pad> included")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-split-digits", dest="split_digits", action="store_false",
                        help="let numbers form multi-digit pieces (how the bundled vocabulary was trained)")
    args = parser.parse_args(argv)

    train_vocab([args.data / "train.de", args.data / "train.en"], args.out, args.size,
                threads=args.threads, seed=args.seed, split_digits=args.split_digits)
    vocab = MarianTokenizer.from_dir(args.out)
    print(f"vocabulary: {vocab.source_vocab_size} ids (</s>={vocab.eos_id}, <unk>={vocab.unk_id}, "
          f"<pad>={vocab.pad_id}) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
