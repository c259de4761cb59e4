"""`mtserve translate` and `mtserve models` as subprocesses against a running server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtserve.engine.translator import Translator

MAX_LENGTH = 24


def mtserve(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("mtserve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mtserve.server.cli"]
    return subprocess.run(
        [*command, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_translate_arguments(server: Any, offline: Callable[[str], Translator], helpers: Any) -> None:
    texts = helpers.sample_texts(3, seed=31)
    done = mtserve("translate", "--server", server.address, "--max-length", str(MAX_LENGTH), *texts)
    assert done.returncode == 0, done.stderr
    expected = [t.text for t in offline("tiny").translate(texts, max_length=MAX_LENGTH)]
    assert done.stdout.split("\n") == [*expected, ""]  # one line per text, in order


def test_translate_stdin_with_options(server: Any, offline: Callable[[str], Translator]) -> None:
    lines = ["Tom eats an apple.", "", "Mary sells the house today!"]
    done = mtserve(
        "translate", "--server", server.address, "--model", "short", "--beam-size", "2", "--max-length", "12",
        "--batch-size", "2",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [t.text for t in offline("short").translate(lines, max_length=12, beam_size=2)]
    assert expected[1] == ""  # an empty line stays an (empty) line, so outputs align with inputs
    assert done.stdout.split("\n") == [*expected, ""]


def test_translate_error_exits_nonzero_with_the_message(server: Any) -> None:
    done = mtserve("translate", "--server", server.address, "--model", "nope", "Tom eats.")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "INVALID_ARGUMENT" in done.stderr and "unknown model 'nope'" in done.stderr


def test_models(server: Any) -> None:
    table = mtserve("models", "--server", server.address)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().split("\n")
    assert lines[0].split()[:2] == ["NAME", "LANGUAGES"]
    assert [line.split()[0] for line in lines[1:]] == ["tiny", "endless", "short"]
    assert lines[1].split()[1] == "en-de" and lines[1].endswith("(default)")

    listed = mtserve("models", "--server", server.address, "--json")
    assert listed.returncode == 0, listed.stderr
    models = json.loads(listed.stdout)
    assert [(m["name"], m["is_default"], m["max_source_length"]) for m in models] == [
        ("tiny", True, 128), ("endless", False, 256), ("short", False, 32)
    ]
