"""What the translation controls cost, on the bundled model (or --model DIR).

    python -m benchmarks.controls [--texts 16] [--prefix-lengths 4 8 16 32] [--repeats 3] [--threads N]

- **Target prefix**: each of ``--texts`` German sentences is translated greedily with a target prefix of
  each length (its own greedy translation's first tokens, repeated as needed), two ways over the same
  engine: ``target_prefixes`` (mtserve's way: the prefix fed in one batched prefill pass when the texts
  join) and ``prefixes`` (the same tokens forced one step each, how the steps force a language token).
  Both give the same tokens.
- **Alignments**: the same texts with beam 4, with and without ``return_alignments`` (one teacher-forced
  pass per finished text).
- **Terminology**: German sentences built from templates around the nouns of a small glossary whose
  targets are not the model's first choice ("Haus" → "building"), beam 4, with and without the glossary:
  how often every applicable term is in the translation, and the time per batch.

Median milliseconds per batch after a warm-up round. Results go to
benchmarks/results/<device>-controls.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    default_threads,
    detect_device,
    git_revision,
    load_sentences,
    markdown_table,
    set_torch_threads,
    write_results,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--prefix-lengths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate after the prefix")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args(argv)
    set_torch_threads(args.threads)
    device = detect_device(args.threads, cpu_only=True)

    from mtserve.engine.translator import Translator
    from mtserve.model.options import SearchOptions

    translator = Translator.load(args.model) if args.model else Translator.load_default(device="cpu")
    texts, origin = load_sentences(args.texts)
    sources = [translator.tokenizer.encode(text) for text in texts]
    seeds = translator.generate(sources, SearchOptions(max_length=64))
    rows = []
    for length in args.prefix_lengths:
        prefixes = []
        for hypotheses in seeds:
            tokens = hypotheses[0].token_ids or [translator.config.eos_token_id - 1]
            prefixes.append(tuple((tokens * (length // len(tokens) + 1))[:length]))
        options = SearchOptions(max_length=length + args.max_new_tokens)
        timings: dict[str, list[float]] = {"prefill": [], "forced": []}
        outputs = {}
        for _ in range(args.repeats + 1):  # the first round warms up
            for way in timings:
                started = time.perf_counter()
                if way == "prefill":
                    outputs[way] = translator.generate(sources, options, target_prefixes=prefixes)
                else:
                    outputs[way] = translator.generate(sources, options, prefixes=prefixes)
                timings[way].append(time.perf_counter() - started)
        same = sum(a[0].token_ids == b[0].token_ids for a, b in zip(outputs["prefill"], outputs["forced"],
                                                                    strict=True))
        prefill, forced = (statistics.median(timings[way][1:]) for way in ("prefill", "forced"))
        rows.append([length, f"{prefill * 1000:.1f}", f"{forced * 1000:.1f}", f"{forced / prefill:.2f}x",
                     f"{same}/{len(sources)}"])
    headers = ["prefix tokens", "prefill ms", "token by token ms", "speed-up", "same tokens"]
    title = (f"Target prefix, {len(sources)} texts ({origin}), greedy, {args.max_new_tokens} tokens after the "
             f"prefix; {device.line()}; revision {git_revision()}")
    table = markdown_table(headers, rows)
    beam = SearchOptions(beam_size=4, max_length=64)
    alignment: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats + 1):
        for align in alignment:
            started = time.perf_counter()
            translator.generate(sources, beam, align=align)
            alignment[align].append(time.perf_counter() - started)
    plain, aligned = (statistics.median(alignment[a][1:]) for a in (False, True))
    align_headers = ["decoding", "plain ms", "with alignments ms", "cost"]
    align_rows = [["beam 4", f"{plain * 1000:.1f}", f"{aligned * 1000:.1f}", f"+{(aligned / plain - 1) * 100:.0f}%"]]
    align_title = f"Alignments, the same {len(sources)} texts"
    align_table = markdown_table(align_headers, align_rows)
    term_rows = _terminology(translator, args.repeats)
    term_headers = ["decoding", "texts", "terms met", "plain ms", "with terminology ms", "cost"]
    term_table = markdown_table(term_headers, term_rows)
    report = (f"{title}\n\n{table}\n\n{align_title}\n\n{align_table}\n\nTerminology (glossary of "
              f"{len(GLOSSARY)} terms, template sentences)\n\n{term_table}\n")
    print(report)
    write_results(Path(RESULTS) / f"{device.tag}-controls", report, {
        "title": title, "headers": headers, "rows": rows,
        "alignments": {"headers": align_headers, "rows": align_rows},
        "terminology": {"headers": term_headers, "rows": term_rows}})
    return 0


#: Source noun -> a target term the bundled model does not say by itself.
GLOSSARY = {"Haus": "building", "Hund": "puppy", "Kaffee": "espresso", "Bahnhof": "railway station",
            "Auto": "vehicle", "Stadt": "town", "Buch": "volume", "Garten": "yard"}
_TEMPLATES = ["Das {0} ist klein.", "Wo ist das {0}?", "Ich sehe das {0} und den {1}.", "Der {0} ist alt.",
              "Wir gehen heute in den {0}.", "Mein {0} steht neben dem {1}."]


def _terminology(translator: Any, repeats: int) -> list[list[Any]]:
    nouns = list(GLOSSARY)
    texts = [template.format(nouns[i % len(nouns)], nouns[(i + 3) % len(nouns)])
             for i, template in enumerate(_TEMPLATES * 4)]
    timings: dict[bool, list[float]] = {False: [], True: []}
    results = []
    for _ in range(repeats + 1):
        for constrained in timings:
            started = time.perf_counter()
            results = translator.translate(texts, beam_size=4, terminology=GLOSSARY if constrained else None)
            timings[constrained].append(time.perf_counter() - started)
    from mtserve.engine.terminology import applicable

    wanted = [applicable(text, GLOSSARY) for text in texts]
    met = sum(all(term in result.text for term in terms) for terms, result in zip(wanted, results, strict=True))
    plain, constrained = (statistics.median(timings[c][1:]) for c in (False, True))
    return [["beam 4", len(texts), f"{met}/{len(texts)}", f"{plain * 1000:.1f}", f"{constrained * 1000:.1f}",
             f"+{(constrained / plain - 1) * 100:.0f}%"]]


if __name__ == "__main__":
    raise SystemExit(main())
