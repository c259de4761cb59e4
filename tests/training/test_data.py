"""The Ding parser, the split rule, the .deb handling and the vocabulary layout."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from mtserve.model.tokenizers import MarianTokenizer
from mtserve.training import data
from mtserve.training.vocab import train_vocab

# Real lines of the Ding dictionary (trans-de-en 1.9-6), copied verbatim.
EEL_SPEAR = "Aalspieß {m} | Aalspieße {pl} :: eel spear | eel spears"
EEL_TRAP = (
    "Aalreuse {f}; Aalkorb {m} | Aalreusen {pl}; Aalkörbe {pl} :: eel trap; weel [archaic] <weely> | eel traps; weels"
)
HEART_INDEX = "Herzindex {m} /HI/ [med.] :: cardiac index /CI/"
A_AND_O = "das A und O [ugs.] :: the nuts and bolts [coll.]"
AMPHIUMA = (
    "Aalmolche {pl}; Fischmolche {pl} (Amphiuma) (zoologische Gattung) [zool.] <Aalmolch> :: amphiuma salamanders; "
    "amphiumas; congo eels [coll.]; congo snakes [coll.] (zoological genus)"
)
DRAW = (
    "Unentschieden {n}; Remis {n} (Wettkampfergebnis) [sport] | dem Gegner ein Remis anbieten (Schach) | "
    "Das Spiel endete unentschieden.; Das Spiel ging unentschieden aus. :: tie; draw; standoff; deadlock [Am.] "
    "(competition result) | to offer your opponent a draw (chess) | The game ended in a tie.; "
    "The game ended in a draw.; The game was a draw."
)
HONOUR = (
    "verpflichtet sein, etw. zu tun {v} | moralisch verpflichtet sein, etw. zu tun | Ich halte das für meine "
    "Pflicht.; Ich fühle mich dazu moralisch verpflichtet. :: to be bound to do sth. | to be bound in honour "
    "[Br.]/honor [Am.] to do sth.; to be on your honour/honor to do sth. | I feel honour-bound to do it."
)
WALK_ALONG = (
    "ablaufen; entlanglaufen {vt} | ablaufend; entlanglaufend | abgelaufen; entlanggelaufen | er/sie läuft ab | "
    "ich/er/sie lief ab | er/sie ist/war abgelaufen :: to walk along | walking along | walked along | "
    "he/she walks along | I/he/she walked along | he/she has/had walked along"
)
CONTRACTION = (
    "Herzkontraktion {f} [med.] | Herzkontraktionen {pl} | frustrane Herzkontraktion :: cardiac contraction | "
    "cardiac contractions | h(a)emodynamically inefficient cardiac contraction"
)
ADDRESS = (
    "Adresse {f} /Adr./; Anschrift {f} | Adressen {pl}; Anschriften {pl} | Firmenadresse {f}; Firmenanschrift {f} "
    "| per Adresse /p. A.; p. Adr./; bei; wohnhaft bei | ladungsfähige Anschrift/Adresse [jur.] | die letzte "
    "bekannte Anschrift des Verdächtigen | An der Anschrift 15 Parkfield Road gibt es keinen MACKENZIE. :: "
    "address | addresses | company address; company’s address | care of (c/o) | address for service of a "
    "summons; address where a summons may be served | the last known address of/for the suspect | There is not "
    "a MACKENZIE associated to the address of 15 Parkfield Road."
)
ACRONYM = (
    "Wenn du weißt, was ich meine, und ich denke, du tust es. :: If you know what I mean and I think you do. "
    "/IYKWIMAITYD/"
)
EXTRAWURST = (
    "Extrawurst {f} (abweichende persönliche Behandlung) [übtr.] | Er will/muss immer eine Extrawurst (gebraten) "
    "haben. | Extrawürste wird es für sie nicht geben. | Eine Extrawurst werde ich dir nicht braten. :: different "
    "treatment; special arrangement | He always wants/has to have things differently. | They won’t be given "
    "special arrangements. | I won’t make an exception for you."
)
RECOVERY_VEHICLE = (
    "Bergepanzer {m} [mil.] | Bergepanzer {pl} :: armoured [Br.]/armored [Am.] recovery vehicle /ARV/; recovery "
    "tank; wrecker tank [Am.]; wrecker [Am.] | armoured/armored recovery vehicles; recovery tanks; wrecker tanks; "
    "wreckers"
)
CARBON = (
    "aufgelöst; gelöst; in Lösung befindlich {adj} [chem.] | gelöste organische Stoffe (in Gewässern) [envir.] | "
    "gelöster organischer/anorganischer Kohlenstoff (in Gewässern) [envir.] :: dissolved | dissolved organic "
    "matter /DOM/ (in waters) | dissolved organic/inorganic carbon /DOC/ (in waters)"
)
BLACK_WHITE = "schwarz/weiß /sw, s/w/ :: black and white /B&W, b&w, B/W/"
ALL_SQUARE = "Gleichstand {m} (Golf) [sport] :: all square /a/s/ (golf)"
PRO_FORMA = "Proformarechnung {f} [fin.] | Proformarechnungen {pl} :: pro-forma invoice /P/I/ /PI/ | pro-forma invoices"
BACKWARDS = (
    "Abwärtskompatibilität {f} (von etw.) [comp.] :: backward(s) compatibility; downward(s) compatibility (of sth.)"
)
COMMENT = "# Version :: devel 2023-01-30"


# --- the parser ---------------------------------------------------------------------------------


def test_sub_entries_align_on_bar_and_annotations_go():
    assert data.parse_line(EEL_SPEAR) == [("Aalspieß", "eel spear"), ("Aalspieße", "eel spears")]
    assert data.parse_line(A_AND_O) == [("das A und O", "the nuts and bolts")]


def test_first_synonym_pairs_with_first_synonym():
    assert data.parse_line(EEL_TRAP) == [("Aalreuse", "eel trap"), ("Aalreusen", "eel traps")]
    assert data.parse_line(AMPHIUMA) == [("Aalmolche", "amphiuma salamanders")]
    assert data.parse_line(DRAW) == [
        ("Unentschieden", "tie"),
        ("dem Gegner ein Remis anbieten", "to offer your opponent a draw"),
        ("Das Spiel endete unentschieden.", "The game ended in a tie."),
    ]


def test_standalone_abbreviations_go_but_slashed_words_stay():
    assert data.parse_line(HEART_INDEX) == [("Herzindex", "cardiac index")]
    assert data.parse_line(ACRONYM) == [
        ("Wenn du weißt, was ich meine, und ich denke, du tust es.", "If you know what I mean and I think you do.")
    ]
    pairs = data.parse_line(WALK_ALONG)
    assert len(pairs) == 6
    assert pairs[3] == ("er/sie läuft ab", "he/she walks along")
    assert pairs[5] == ("er/sie ist/war abgelaufen", "he/she has/had walked along")


def test_abbreviations_holding_slashes_or_spaces_are_removed_whole():
    assert data.parse_line(ALL_SQUARE) == [("Gleichstand", "all square")]
    assert data.parse_line(PRO_FORMA) == [
        ("Proformarechnung", "pro-forma invoice"),
        ("Proformarechnungen", "pro-forma invoices"),
    ]
    assert data.parse_line(BLACK_WHITE) == [("schwarz/weiß", "black and white")]


def test_slashed_alternatives_before_an_abbreviation_stay():
    # Only a slash after whitespace opens an abbreviation: "armoured/armored … /ARV/" keeps its first half.
    assert data.parse_line(RECOVERY_VEHICLE) == [
        ("Bergepanzer", "armoured/armored recovery vehicle"),
        ("Bergepanzer", "armoured/armored recovery vehicles"),
    ]
    assert data.parse_line(CARBON)[2] == (
        "gelöster organischer/anorganischer Kohlenstoff",
        "dissolved organic/inorganic carbon",
    )


def test_abbreviation_holding_a_semicolon_is_removed_before_synonyms_split():
    pairs = data.parse_line(ADDRESS)
    assert pairs[0] == ("Adresse", "address")
    assert pairs[3] == ("per Adresse", "care of")  # not "per Adresse /p. A." paired with a stray "p. Adr./"
    assert pairs[4] == ("ladungsfähige Anschrift/Adresse", "address for service of a summons")
    assert pairs[6][1] == "There is not a MACKENZIE associated to the address of 15 Parkfield Road."


def test_bracket_removal_leaves_no_space_before_slash_or_punctuation():
    assert data.parse_line(HONOUR)[1] == (
        "moralisch verpflichtet sein, etw. zu tun",
        "to be bound in honour/honor to do sth.",
    )


def test_glosses_go_but_in_word_parentheses_stay():
    assert data.parse_line(BACKWARDS) == [("Abwärtskompatibilität", "backward(s) compatibility")]
    assert data.parse_line(CONTRACTION)[2] == (
        "frustrane Herzkontraktion",
        "h(a)emodynamically inefficient cardiac contraction",
    )
    assert data.parse_line(EXTRAWURST)[1] == (
        "Er will/muss immer eine Extrawurst haben.",
        "He always wants/has to have things differently.",
    )


def test_comments_and_mismatched_lines_are_skipped_and_counted():
    stats = data.ParseStats()
    # EEL_SPEAR with the English plural dropped: 2 German sub-entries against 1 English one.
    mismatched = "Aalspieß {m} | Aalspieße {pl} :: eel spear"
    pairs = data.parse([COMMENT, mismatched, "", EEL_SPEAR], stats)
    assert pairs == [("Aalspieß", "eel spear"), ("Aalspieße", "eel spears")]
    assert (stats.lines, stats.comments, stats.mismatched, stats.blank, stats.sub_entries) == (4, 1, 1, 1, 2)


def test_side_empty_after_cleaning_drops_only_that_sub_entry():
    stats = data.ParseStats()
    assert data.parse_line("{m} [ugs.] | Aal :: x | eel", stats) == [("Aal", "eel")]
    assert stats.empty == 1


def test_exact_duplicate_pairs_are_dropped_but_other_translations_kept():
    stats = data.ParseStats()
    pairs = data.parse([EEL_SPEAR, EEL_SPEAR, "Aalspieß {m} :: eel skewer"], stats)
    assert pairs == [("Aalspieß", "eel spear"), ("Aalspieße", "eel spears"), ("Aalspieß", "eel skewer")]
    assert stats.duplicates == 2


def test_full_sentence_definition():
    assert data.is_full_sentence("Das Spiel endete unentschieden.", "The game ended in a tie.")
    assert data.is_full_sentence("„Ja, richtig!“ sagte er.", "'Oh yes, so I did!'")
    assert data.is_full_sentence("Wie lange dauert das?", "How long does it take?")
    assert not data.is_full_sentence("verpflichtet sein, etw. zu tun", "to be bound to do sth.")
    assert not data.is_full_sentence("Anspruch auf etw.", "claim to sth.")  # lower-case English side
    assert not data.is_full_sentence("Rate mal!", "Have a guess!")  # two German words
    assert not data.is_full_sentence("Der Regen hat aufgehört", "The rain is over.")  # no end mark


# --- the split rule -------------------------------------------------------------------------------


def _bucket(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 100


def test_split_rule_matches_sha1_buckets():
    # Known buckets of real cleaned German entries, checked against hashlib right here.
    assert _bucket("Abbaumaschinen") == 0 and data.split_of("Abbaumaschinen") == "test"
    assert _bucket("Aalhaut") == 1 and data.split_of("Aalhaut") == "dev"
    assert _bucket("Aalspieß") not in (0, 1) and data.split_of("Aalspieß") == "train"
    words = [f"Wort{i} äöü" for i in range(2000)]
    expected = {0: "test", 1: "dev"}
    assert [data.split_of(w) for w in words] == [expected.get(_bucket(w), "train") for w in words]


def test_write_splits_keeps_all_translations_of_a_german_text_together(tmp_path: Path):
    pairs = [
        ("Abbaumaschinen", "mining machines"),
        ("Abbaumaschinen", "cutting machines"),
        ("Aalhaut", "eelskin"),
        ("Aalspieß", "eel spear"),
        ("Das Spiel endete unentschieden.", "The game ended in a tie."),
    ]
    counts = data.write_splits(pairs, tmp_path)
    read = {name: (tmp_path / f"{name}.de").read_text(encoding="utf-8").splitlines() for name in counts}
    assert read["test"] == ["Abbaumaschinen", "Abbaumaschinen"]
    assert (tmp_path / "test.en").read_text(encoding="utf-8").splitlines() == ["mining machines", "cutting machines"]
    assert read["dev"] == ["Aalhaut"]
    sentence_split = data.split_of("Das Spiel endete unentschieden.")
    assert read[f"{sentence_split}-sentences"] == ["Das Spiel endete unentschieden."]
    assert "Das Spiel endete unentschieden." in read[sentence_split]
    assert counts["train"] + counts["dev"] + counts["test"] == len(pairs)
    assert not list(tmp_path.glob("*.tmp"))


# --- getting the dictionary out of the package ------------------------------------------------------


def _fake_deb(path: Path, text: str) -> Path:
    """A minimal .deb: an ar archive whose data.tar.xz holds the dictionary at its real path."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        payload = text.encode("utf-8")
        info = tarfile.TarInfo("./" + data.MEMBER)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(b"")),
               ("data.tar.xz", lzma.compress(tar_bytes.getvalue()))]
    out = b"!<arch>\n"
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    path.write_bytes(out)
    return path


def test_extracts_the_dictionary_from_a_deb(tmp_path: Path):
    text = f"{COMMENT}\n{EEL_SPEAR}\n"
    deb = _fake_deb(tmp_path / "trans-de-en_9.9-1_all.deb", text)
    assert data.extract_dictionary(deb, tmp_path / "out" / "de-en.txt").read_text(encoding="utf-8") == text


def test_downloads_with_apt_get_when_no_deb_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def fake_run(args, cwd, **kwargs):
        calls.append((args, Path(cwd)))
        _fake_deb(Path(cwd) / "trans-de-en_1.9-6_all.deb", EEL_SPEAR + "\n")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_run)
    assert data.main(["--out", str(tmp_path / "corpus")]) == 0
    assert calls == [(["apt-get", "download", "trans-de-en"], tmp_path / "corpus" / "cache")]
    lines = sum(len((tmp_path / "corpus" / f"{s}.de").read_text().splitlines()) for s in data.SPLITS)
    assert lines == 2
    # A second run finds the cached dictionary and does not download again.
    assert data.main(["--out", str(tmp_path / "corpus")]) == 0
    assert len(calls) == 1


def test_download_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        data.subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(args, 100, "", "E: no package")
    )
    with pytest.raises(RuntimeError, match="apt-get update"):
        data.dictionary_path(tmp_path)


def _real_deb() -> Path | None:
    """The real trans-de-en package: $MTSERVE_DING_DEB (CI downloads it) or any copy in /tmp."""
    if os.environ.get("MTSERVE_DING_DEB"):
        return Path(os.environ["MTSERVE_DING_DEB"])
    return next(iter(sorted(Path("/tmp").glob("trans-de-en_*_all.deb"))), None)


REAL_DEB = _real_deb()


def test_real_package_parses_without_leftover_annotations(tmp_path: Path):
    if REAL_DEB is None or not REAL_DEB.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("the real trans-de-en .deb is missing: .ci/run downloads it into $MTSERVE_DING_DEB")
        pytest.skip("the real trans-de-en .deb is not on this machine (apt-get download trans-de-en)")
    text = data.extract_dictionary(REAL_DEB, tmp_path / "de-en.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("# Version")
    stats = data.ParseStats()
    pairs = data.parse(lines[:5000], stats)
    assert len(pairs) > 8000 and stats.mismatched == 0
    for de, en in pairs:
        for side in (de, en):
            assert side and side == side.strip() and "  " not in side
            assert not any(c in side for c in "{}[]<>"), side


# --- the vocabulary -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vocab")
    corpus = root / "train.txt"
    lines = [EEL_SPEAR, EEL_TRAP, DRAW, HONOUR, WALK_ALONG, CONTRACTION, ADDRESS, EXTRAWURST, ACRONYM] * 20
    corpus.write_text("\n".join(side for line in lines for side in line.split(" :: ")) + "\n", encoding="utf-8")
    return train_vocab([corpus], root / "vocab", size=200, threads=1)


def test_vocab_has_the_marian_layout(vocab_dir: Path):
    assert {p.name for p in vocab_dir.iterdir()} >= {"source.spm", "target.spm", "vocab.json"}
    assert (vocab_dir / "source.spm").read_bytes() == (vocab_dir / "target.spm").read_bytes()
    vocab = json.loads((vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 200
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == 199
    assert sorted(vocab.values()) == list(range(200))  # dense, no id twice


SENTENCES = [
    "Das Spiel endete unentschieden.",
    "I feel honour-bound to do it.",
    "Er will immer eine Extrawurst haben.",
    "Qxz unbekannt ☃",  # characters the model has never seen
]


def test_vocab_loads_in_transformers_with_the_same_ids(vocab_dir: Path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.MarianTokenizer(
        source_spm=str(vocab_dir / "source.spm"),
        target_spm=str(vocab_dir / "target.spm"),
        vocab=str(vocab_dir / "vocab.json"),
    )
    ours = MarianTokenizer.from_dir(vocab_dir)
    assert (hf.eos_token_id, hf.unk_token_id, hf.pad_token_id) == (ours.eos_id, ours.unk_id, ours.pad_id) == (0, 1, 199)
    for text in SENTENCES:
        ids = ours.encode(text)
        assert hf(text)["input_ids"] == ids
        assert hf(text_target=text)["input_ids"] == ids
        assert ids[-1] == 0 and ours.pad_id not in ids
    assert ours.encode(SENTENCES[3]).count(ours.unk_id) >= 1
    assert ours.decode(ours.encode(SENTENCES[0])) == SENTENCES[0]
    assert hf.decode(ours.encode(SENTENCES[1]), skip_special_tokens=True) == SENTENCES[1]
