"""Score a model directory on held-out splits with sacrebleu (BLEU, chrF), through the serving decoder.

    python -m mtserve.training.evaluate --model mtserve/model/default --data data/de-en \\
        --splits test,test-sentences --beams 1,4

The splits are those ``python -m mtserve.training.data`` writes (``NAME.de`` / ``NAME.en``). Prints a
markdown table; ``--json`` prints the numbers for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mtserve.engine.translator import Translator
from mtserve.model.quantize import QUANTIZE_MODES

from .data import read_split


def score(translator: Translator, sources: list[str], references: list[str], beam_size: int) -> dict[str, float]:
    import sacrebleu  # the 'train'/'test' extras

    started = time.perf_counter()
    # Dictionary entries are short: 2x the source plus a margin bounds every sensible output.
    longest = max((len(translator.tokenizer.encode(s)) for s in sources), default=1)
    max_length = min(2 * longest + 10, translator.defaults["max_length"])
    hypotheses = [t.text for t in translator.translate(sources, beam_size=beam_size, max_length=max_length)]
    return {
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
        "pairs": len(sources),
        "seconds": round(time.perf_counter() - started, 1),
    }


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
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator.load(args.model, device=args.device, quantize=args.quantize, shortlist=args.shortlist)
    rows = []
    for split in args.splits.split(","):
        sources, references = read_split(args.data, split)
        for beam in (int(b) for b in args.beams.split(",")):
            rows.append({"split": split, "beam_size": beam, **score(translator, sources, references, beam)})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        print("| split | decoding | pairs | BLEU | chrF | seconds |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            decoding = "greedy" if r["beam_size"] == 1 else f"beam {r['beam_size']}"
            print(f"| {r['split']} | {decoding} | {r['pairs']} | {r['bleu']} | {r['chrf']} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
