"""Score a model directory on held-out splits with sacrebleu (BLEU, chrF), through the serving decoder.

    python -m mtserve.training.evaluate --model mtserve/model/default --data data/de-en \\
        --splits test,test-sentences --beams 1,4 [--everyday]

The splits are those ``python -m mtserve.training.data`` writes (``NAME.de`` / ``NAME.en``). Besides BLEU
and chrF, each row counts the outputs that keep every number of their source (``numbers kept``: of the
sources with a number, those whose every digit group appears in the output as often: "0171 234567" must
give 0171 and 234567, "3,5" may become "3.5"). ``--everyday`` also translates training/everyday.tsv, 40
everyday sentences written for the model card, and prints each output beside its reference for judging.
Prints markdown; ``--json`` prints the numbers for machines.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from mtserve.engine.translator import Translator
from mtserve.model.quantize import QUANTIZE_MODES

from .data import read_split

EVERYDAY = Path(__file__).with_name("everyday.tsv")
_DIGITS = re.compile(r"\d+")


def numbers_kept(sources: Sequence[str], outputs: Sequence[str]) -> tuple[int, int]:
    """(outputs keeping every digit group of their source, sources with a digit group)."""
    kept = with_numbers = 0
    for source, output in zip(sources, outputs, strict=True):
        wanted = Counter(_DIGITS.findall(source))
        if not wanted:
            continue
        with_numbers += 1
        found = Counter(_DIGITS.findall(output))
        kept += all(found[group] >= count for group, count in wanted.items())
    return kept, with_numbers


def translate(translator: Translator, sources: list[str], beam_size: int) -> list[str]:
    # Dictionary entries are short: 2x the source plus a margin bounds every sensible output.
    longest = max((len(translator.tokenizer.encode(s)) for s in sources), default=1)
    max_length = min(2 * longest + 10, translator.defaults["max_length"])
    return [t.text for t in translator.translate(sources, beam_size=beam_size, max_length=max_length)]


def score(translator: Translator, sources: list[str], references: list[str], beam_size: int) -> dict[str, float]:
    import sacrebleu  # the 'train'/'test' extras

    started = time.perf_counter()
    hypotheses = translate(translator, sources, beam_size)
    kept, with_numbers = numbers_kept(sources, hypotheses)
    return {
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
        "pairs": len(sources),
        "numbers_kept": kept,
        "with_numbers": with_numbers,
        "seconds": round(time.perf_counter() - started, 1),
    }


def read_everyday(path: Path = EVERYDAY) -> tuple[list[str], list[str]]:
    """The everyday sentences (German, English reference); '#' lines are comments."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    return [row[0] for row in rows], [row[1] for row in rows]


def everyday_table(translator: Translator, beam_size: int) -> str:
    sources, references = read_everyday()
    outputs = translate(translator, sources, beam_size)
    lines = ["| German | reference | output |", "|---|---|---|"]
    lines += [f"| {s} | {r} | {o} |" for s, r, o in zip(sources, references, outputs, strict=True)]
    kept, with_numbers = numbers_kept(sources, outputs)
    return "\n".join(lines) + f"\n\nnumbers kept: {kept}/{with_numbers}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtserve-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a Marian model directory")
    parser.add_argument("--data", required=True, type=Path, help="directory with NAME.de / NAME.en splits")
    parser.add_argument("--splits", default="test,test-sentences", help="comma-separated split names")
    parser.add_argument("--beams", default="1,4", help="comma-separated beam sizes (1 = greedy)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_MODES,
                        help="int8: score the model with int8 linear layers (CPU), as mtserve serve --quantize int8")
    parser.add_argument("--shortlist", action="store_true",
                        help="decode with the model's vocabulary shortlist (vmap.txt), as serve --shortlist on")
    parser.add_argument("--everyday", action="store_true",
                        help="also translate training/everyday.tsv (the last beam size) and print it")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator.load(args.model, device=args.device, quantize=args.quantize, shortlist=args.shortlist)
    beams = [int(b) for b in args.beams.split(",")]
    rows = []
    for split in filter(None, args.splits.split(",")):
        sources, references = read_split(args.data, split)
        for beam in beams:
            rows.append({"split": split, "beam_size": beam, **score(translator, sources, references, beam)})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print("| split | decoding | pairs | BLEU | chrF | numbers kept | seconds |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            decoding = "greedy" if r["beam_size"] == 1 else f"beam {r['beam_size']}"
            numbers = f"{r['numbers_kept']}/{r['with_numbers']}" if r["with_numbers"] else "–"
            print(f"| {r['split']} | {decoding} | {r['pairs']} | {r['bleu']} | {r['chrf']} | {numbers} | "
                  f"{r['seconds']} |")
    if args.everyday:
        print()
        print(everyday_table(translator, beams[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
