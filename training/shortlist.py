"""Build a vocabulary shortlist (model/shortlist.py) for a model from a parallel corpus.

    python -m mtserve.training.shortlist --model model/default --data data/de-en-v2 --split train \\
        --top 30 --frequent 200 [--max-pairs 500000] [--out model/default/vmap.txt]

The lexical table is read off the corpus, tokenized with the model's own tokenizer: for each source piece,
the target pieces that occur in the same sentence pairs most often relative to how often each occurs at
all (the Dice coefficient, 2·c(s,t) / (c(s) + c(t)), which does not rank the frequent pieces above the
translations), its ``--top`` best. Every text may also produce the ``--frequent`` most frequent target
pieces, and a source piece that is also a target piece (a number, a name) allows itself, so that what is
copied is never cut off. Written as CTranslate2's vocabulary map (vmap.txt), which CTranslate2 reads too.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtserve.model.config import ModelConfig
from mtserve.model.shortlist import VMAP_FILE, Shortlist
from mtserve.model.tokenizers import Tokenizer, load_tokenizer

from .data import read_split


def build(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    source_size: int,
    target_size: int,
    *,
    top: int = 30,
    frequent: int = 200,
    identical: dict[int, int] | None = None,
    always: Sequence[int] = (),
) -> Shortlist:
    """The shortlist of a tokenized corpus (source ids, target ids per pair); `identical` maps a source id
    to the target id of the same token (copied pieces), `always` adds ids every text may produce."""
    source_count = np.zeros(source_size, dtype=np.int64)
    target_count = np.zeros(target_size, dtype=np.int64)
    keys: list[np.ndarray] = []
    for source, target in pairs:
        s = np.unique(np.asarray(source, dtype=np.int64))
        t = np.unique(np.asarray(target, dtype=np.int64))
        source_count[s] += 1
        target_count[t] += 1
        keys.append((s[:, None] * target_size + t[None, :]).ravel())
    joint, counts = np.unique(np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64), return_counts=True)
    s_ids, t_ids = np.divmod(joint, target_size)
    dice = 2.0 * counts / (source_count[s_ids] + target_count[t_ids])
    # Best first within each source id: sort by (source id, -dice).
    order = np.lexsort((-dice, s_ids))
    s_sorted, t_sorted = s_ids[order], t_ids[order]
    starts = np.searchsorted(s_sorted, np.arange(source_size))
    stops = np.searchsorted(s_sorted, np.arange(source_size), side="right")
    entries: dict[tuple[int, ...], frozenset[int]] = {}
    for source_id in np.nonzero(stops > starts)[0]:
        chosen = set(t_sorted[starts[source_id] : min(stops[source_id], starts[source_id] + top)].tolist())
        if identical and int(source_id) in identical:
            chosen.add(identical[int(source_id)])
        entries[(int(source_id),)] = frozenset(chosen)
    most = np.argsort(-target_count, kind="stable")[:frequent]
    return Shortlist(frozenset(int(i) for i in most if target_count[i] > 0) | frozenset(always), entries)


def build_for_model(tokenizer: Tokenizer, sources: Sequence[str], targets: Sequence[str], *, top: int,
                    frequent: int) -> Shortlist:
    """A model's shortlist from a corpus, with its tokenizer's ids, copies and special tokens."""
    source_vocabulary, target_vocabulary = tokenizer.vocabulary("source"), tokenizer.vocabulary("target")
    pairs = [(tokenizer.encode(s), tokenizer.encode_prefix(t)) for s, t in zip(sources, targets, strict=True)]
    identical = {i: target_vocabulary[token] for token, i in source_vocabulary.items() if token in target_vocabulary}
    special = [target_vocabulary[t] for t in ("</s>", "<unk>") if t in target_vocabulary]
    return build(pairs, max(source_vocabulary.values()) + 1, max(target_vocabulary.values()) + 1, top=top,
                 frequent=frequent, identical=identical, always=special)


def tokens_by_id(vocabulary: dict[str, int]) -> list[str]:
    names = [""] * (max(vocabulary.values()) + 1)
    for token, index in vocabulary.items():
        names[index] = token
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the model directory (its tokenizer)")
    parser.add_argument("--data", type=Path, required=True, help="directory with SPLIT.de and SPLIT.en")
    parser.add_argument("--split", default="train")
    parser.add_argument("--top", type=int, default=30, help="target pieces per source piece (%(default)s)")
    parser.add_argument("--frequent", type=int, default=200, help="most frequent target pieces, always allowed")
    parser.add_argument("--max-pairs", type=int, default=500_000, help="a random sample of at most this many pairs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help=f"default: MODEL/{VMAP_FILE}")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.model, ModelConfig.from_dir(args.model))
    sources, targets = read_split(args.data, args.split)
    if len(sources) > args.max_pairs:
        chosen = sorted(random.Random(args.seed).sample(range(len(sources)), args.max_pairs))
        sources, targets = [sources[i] for i in chosen], [targets[i] for i in chosen]
    shortlist = build_for_model(tokenizer, sources, targets, top=args.top, frequent=args.frequent)
    out = shortlist.write(args.out or args.model / VMAP_FILE, tokens_by_id(tokenizer.vocabulary("source")),
                          tokens_by_id(tokenizer.vocabulary("target")))
    sizes = [len(v) for v in shortlist.entries.values()]
    print(f"{out}: {len(shortlist.entries)} source pieces, {sum(sizes) / max(1, len(sizes)):.1f} target pieces "
          f"each on average, {len(shortlist.always)} always allowed (from {len(sources)} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
