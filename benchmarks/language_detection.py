"""Language detection for LibreTranslate's `source: "auto"` and `/detect`: py3langid against lingua.

    python -m benchmarks.language_detection [--sentences 1000]

Labelled text: the full sentences of the Ding dictionary (Debian's trans-de-en, `apt-get download`ed as the
training data is), German and English sides, `--sentences` of each. Each detector is restricted to the
candidate languages, as the server restricts it to the languages its models take: {de, en} (the bundled
model) and ten European languages (what a multilingual model would offer); accuracy is the share of
sentences given their own language, time the mean per sentence, on one thread. Results go to
benchmarks/results/cpu-language-detection.{md,json}.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mtserve.training import data

from .common import RESULTS, cpu_model, git_revision, markdown_table, write_json

CANDIDATES = {"2": ["de", "en"], "10": ["da", "de", "en", "es", "fr", "it", "nl", "pl", "pt", "sv"]}


def labelled(count: int, cache: Path) -> list[tuple[str, str]]:
    pairs = data.parse(data.dictionary_path(cache).read_text(encoding="utf-8").splitlines())
    full = [pair for pair in pairs if data.is_full_sentence(*pair)]
    random.Random(0).shuffle(full)
    return [(german, "de") for german, _ in full[:count]] + [(english, "en") for _, english in full[:count]]


def py3langid_detector(languages: Sequence[str]) -> Callable[[str], str]:
    from mtserve.server.detection import detect

    return lambda text: detect(text, languages).language  # type: ignore[union-attr]


def lingua_detector(languages: Sequence[str]) -> Callable[[str], str]:
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in languages]
    detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()

    def detect(text: str) -> str:
        found = detector.detect_language_of(text)
        return found.iso_code_639_1.name.lower() if found is not None else ""

    return detect


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000, help="sentences per language (default 1000)")
    parser.add_argument("--cache", type=Path, default=Path(".ci/cache"), help="where the Ding package is kept")
    args = parser.parse_args(argv)
    texts = labelled(args.sentences, args.cache)
    rows, records = [], []
    for detector_name, build in (("py3langid", py3langid_detector), ("lingua", lingua_detector)):
        for candidates, languages in CANDIDATES.items():
            detect = build(languages)
            detect(texts[0][0])  # load the model before timing
            started = time.perf_counter()
            correct = sum(detect(text) == language for text, language in texts)
            seconds = (time.perf_counter() - started) / len(texts)
            accuracy = correct / len(texts)
            rows.append([detector_name, candidates, len(texts), f"{accuracy:.1%}", f"{seconds * 1e6:.0f} µs"])
            records.append({"detector": detector_name, "candidates": languages, "texts": len(texts),
                            "accuracy": accuracy, "seconds_per_text": seconds})
    table = markdown_table(["detector", "candidate languages", "sentences", "accuracy", "time per sentence"], rows)
    header = (f"# Language detection\n\n{cpu_model()}, one thread, git {git_revision()}; `python -m "
              f"benchmarks.language_detection --sentences {args.sentences}`: Ding dictionary full sentences, half "
              "German, half English.\n\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu-language-detection.md").write_text(header + table + "\n")
    write_json(RESULTS / "cpu-language-detection.json", records)
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
