"""The corpus builder (mtserve.training.corpus): union, split, per-source files, and the Ding metric kept."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from mtserve.training import corpus, data


def _real_deb() -> Path | None:
    """The real trans-de-en package, as tests/training/test_data.py finds it ($MTSERVE_DING_DEB or /tmp)."""
    if os.environ.get("MTSERVE_DING_DEB"):
        return Path(os.environ["MTSERVE_DING_DEB"])
    return next(iter(sorted(Path("/tmp").glob("trans-de-en_*_all.deb"))), None)


REAL_DEB = _real_deb()

# Real Ding pairs (cleaned as data.py cleans them) and DDTP-like pairs; the hashes put some in each split.
DING = [
    ("Abbaumaschinen", "mining machines"),  # test
    ("Aalhaut", "eelskin"),  # dev
    ("Aalspieß", "eel spear"),  # train
    ("Das Spiel endete unentschieden.", "The game ended in a tie."),
    ("Ich habe 12 Bücher gekauft.", "I bought 12 books."),
]
OTHER = [(f"Das Paket {i} enthält die Dateien für Anna.", f"Package {i} contains the files for Anna.")
         for i in range(400)]


def _source(name: str, pairs: list[tuple[str, str]]) -> corpus.Source:
    return corpus.Source(name, list(pairs), [name] * len(pairs), raw=len(pairs))


def _read(out: Path, name: str) -> list[str]:
    path = out / name
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_union_keeps_the_first_source_of_a_duplicate():
    ding = _source("ding", [("Aalhaut", "eelskin")])
    ddtp = _source("ddtp", [("Aalhaut", "eelskin"), ("Aalhaut", "eel skin")])
    union = corpus.union([ding, ddtp])
    assert [(g, e, s) for g, e, s, _ in union] == [("Aalhaut", "eelskin", "ding"), ("Aalhaut", "eel skin", "ddtp")]
    assert ddtp.dropped == Counter({"duplicate of an earlier source": 1})


def test_files_follow_the_split_rule_and_keep_ding_sentences(tmp_path: Path):
    sources = [_source("ding", DING), _source("ddtp", OTHER)]
    union = corpus.union(sources)
    augmented = [("Ich habe 37 Bücher gekauft.", "I bought 37 books.")]
    sizes = corpus.write_corpus(union, augmented, tmp_path)

    train, sources_of_train = _read(tmp_path, "train.de"), _read(tmp_path, "train.source")
    assert len(train) == len(_read(tmp_path, "train.en")) == len(sources_of_train)
    assert sources_of_train[-1] == corpus.AUGMENTED and train[-1] == "Ich habe 37 Bücher gekauft."
    for split in data.SPLITS:
        for german in _read(tmp_path, f"{split}.de"):
            assert german == "Ich habe 37 Bücher gekauft." or data.split_of(german) == split
    assert corpus.AUGMENTED not in _read(tmp_path, "dev.source") + _read(tmp_path, "test.source")
    # Each source's dev and test pairs on their own, and the union's full sentences.
    assert _read(tmp_path, "test-ding.de") == ["Abbaumaschinen"]
    assert _read(tmp_path, "dev-ding.de") == ["Aalhaut"]
    ddtp_dev = [g for g, _ in OTHER if data.split_of(g) == "dev"]
    assert ddtp_dev and _read(tmp_path, "dev-ddtp.de") == ddtp_dev
    assert _read(tmp_path, "dev-sentences-all.de") == ddtp_dev  # Ding has no full sentence in dev here
    assert sizes["ddtp"]["dev"] == {"pairs": len(ddtp_dev), "sentences": len(ddtp_dev)}
    assert sizes[corpus.AUGMENTED]["train"]["pairs"] == 1
    # dev-sentences/test-sentences are Ding's only, exactly as data.write_splits writes them.
    metric = corpus.check_ding_metric(sources[0], tmp_path, tmp_path / "ding-only")
    assert metric == {"dev-sentences": 0, "test-sentences": 0}
    assert not list(tmp_path.glob("*.tmp"))


def test_main_builds_a_corpus_and_reports_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(corpus, "ding_source", lambda cache, deb=None: _source("ding", DING))
    monkeypatch.setattr(corpus, "ddtp_source", lambda: _source("ddtp", OTHER))
    out = tmp_path / "v2"
    assert corpus.main(["--out", str(out), "--cache", str(tmp_path / "cache"), "--sources", "ding,ddtp",
                        "--templates", "50", "--samples", "2"]) == 0
    report = json.loads((out / "sources.json").read_text(encoding="utf-8"))
    assert set(report) == {"ding", "ddtp", corpus.AUGMENTED, "_build"}
    assert report["ding"]["licence"].startswith("GPL-2.0-or-later")
    assert sum(report["ddtp"]["splits"][s]["pairs"] for s in data.SPLITS) == len(OTHER)
    assert report[corpus.AUGMENTED]["splits"]["train"]["pairs"] > 40
    printed = capsys.readouterr().out
    assert "ddtp" in printed and "Ding metric unchanged" in printed and "--- augmented ---" in printed
    assert not (out / ".ding-check").exists()


@pytest.mark.skipif(REAL_DEB is None or not REAL_DEB.exists(), reason="the real trans-de-en .deb is not here")
def test_real_ding_metric_is_unchanged_by_the_union(tmp_path: Path):
    ding = corpus.ding_source(tmp_path / "cache", REAL_DEB)
    # Other sources bring new pairs with German sides that also are Ding test/dev sentences: they must not
    # leak into dev-sentences/test-sentences (only Ding's own are the metric).
    test_sentences = [g for g, e in ding.pairs if data.split_of(g) == "test" and data.is_full_sentence(g, e)]
    other = _source("ddtp", [(g, "A different translation.") for g in test_sentences[:5]] + OTHER)
    out = tmp_path / "v2"
    corpus.write_corpus(corpus.union([ding, other]), [], out)
    assert corpus.check_ding_metric(ding, out, tmp_path / "ding-only") == {"dev-sentences": 202,
                                                                          "test-sentences": 189}
    assert len(_read(out, "test-sentences-all.de")) >= 189 + 5
