"""``mtserve translate``, ``mtserve models``, ``mtserve bench`` and the dispatcher, against a fake server."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import grpc
import pytest
from dummy_server import DummyServicer, FlakyServicer, ServerThread

from mtserve.client.bench import percentile
from mtserve.server.cli import main


@pytest.fixture(scope="module")
def server():
    with ServerThread(DummyServicer()) as s:
        yield s


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_dispatcher_usage_and_unknown_command(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and all(name in out for name in ("serve", "translate", "models", "bench", "train"))
    rc, _, err = run(capsys, "frobnicate")
    assert rc == 2 and "unknown command 'frobnicate'" in err


def test_translate_arguments(server, capsys):
    rc, out, _ = run(capsys, "translate", "--server", server.address, "--beam-size", "3", "hello world", "bye")
    assert rc == 0 and out == "HELLO WORLD\nBYE\n"
    assert server.servicer.requests[-1].options.beam_size == 3


def test_translate_early_stopping_flag(server, capsys):
    rc, _, _ = run(capsys, "translate", "--server", server.address, "--beam-size", "4", "--early-stopping", "hi")
    assert rc == 0
    options = server.servicer.requests[-1].options
    assert options.HasField("early_stopping") and options.early_stopping
    run(capsys, "translate", "--server", server.address, "hi")
    assert not server.servicer.requests[-1].options.HasField("early_stopping")  # unset: the server's default


def test_translate_no_split_sentences_flag(server, capsys):
    rc, _, _ = run(capsys, "translate", "--server", server.address, "--no-split-sentences", "Hi. Bye.")
    assert rc == 0
    options = server.servicer.requests[-1].options
    assert options.HasField("split_sentences") and not options.split_sentences
    run(capsys, "translate", "--server", server.address, "Hi. Bye.")
    assert not server.servicer.requests[-1].options.HasField("split_sentences")  # unset: split


def test_translate_warns_on_stderr_about_translations_cut_at_max_length(server, capsys):
    rc, out, err = run(capsys, "translate", "--server", server.address, "--max-length", "4", "a b", "a b c d e")
    assert rc == 0 and out.splitlines() == ["A B", "A B C D E"]  # stdout stays one translation per line
    assert err.strip() == "mtserve translate: line 2 reached max_length and may be cut short (raise --max-length)"


def test_translate_stdin_lines(server, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo three\n\nfour\n"))
    rc, out, _ = run(capsys, "translate", "--server", server.address)
    assert rc == 0 and out == "ONE\nTWO THREE\n\nFOUR\n"  # the empty line keeps its place


def test_translate_files_in_batches_keeps_order(server, capsys, tmp_path):
    lines = [f"line {i}" for i in range(23)]
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = len(server.servicer.requests)
    rc, out, err = run(capsys, "translate", "--server", server.address, "-i", str(src), "-o", str(dst),
                       "--batch-size", "5", "--concurrency", "3")
    assert rc == 0 and out == ""
    assert dst.read_text(encoding="utf-8").splitlines() == [line.upper() for line in lines]
    sizes = sorted(len(r.texts) for r in server.servicer.requests[before:])
    assert sizes == [3, 5, 5, 5, 5]
    assert "23/23" in err  # the progress bar


def test_translate_scores_and_nbest_formats(server, capsys):
    rc, out, _ = run(capsys, "translate", "--server", server.address, "--scores", "a b")
    assert rc == 0 and out == "-0.500000\tA B\n"
    rc, out, _ = run(capsys, "translate", "--server", server.address, "--num-hypotheses", "2", "--scores", "x", "y")
    assert out.splitlines() == ["0 ||| X ||| -0.500000", "0 ||| X #1 ||| -1.500000",
                                "1 ||| Y ||| -0.500000", "1 ||| Y #1 ||| -1.500000"]


def test_translate_error_exit_code(server, capsys):
    rc, out, err = run(capsys, "translate", "--server", server.address, "--model", "invalid", "x")
    assert rc == 1 and out == ""
    # The server refused line 1 (INVALID_ARGUMENT naming texts[0]): the message names the line and the limit.
    assert "line 1: has 12 characters, the limit is 10" in err and "0 of 1 lines translated" in err


def test_models_table_and_json(server, capsys):
    rc, out, _ = run(capsys, "models", "--server", server.address)
    assert rc == 0
    header, first, second = out.splitlines()
    assert header.split()[:3] == ["NAME", "LANGUAGES", "LAYERS"]
    assert first.split() == ["dummy", "en-de", "2+3", "64", "4", "1000/900", "0.1M", "512/256", "cpu", "float32",
                             "(default)"]
    assert second.split()[:2] == ["other", "?-?"]
    rc, out, _ = run(capsys, "models", "--server", server.address, "--json")
    data = json.loads(out)
    assert data[0]["name"] == "dummy" and data[0]["architecture"]["d_model"] == 64


def test_percentile():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_bench_json(server, capsys):
    before = len(server.servicer.requests)
    rc, out, _ = run(capsys, "bench", "--server", server.address, "-c", "3", "-n", "10", "--texts-per-request", "2",
                     "--json")
    report = json.loads(out)
    assert rc == 0
    assert (report["requests"], report["ok"], report["texts"]) == (10, 10, 20)
    assert report["codes"] == {"OK": 10}
    assert len(server.servicer.requests) - before == 10
    assert all(len(r.texts) == 2 for r in server.servicer.requests[before:])
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["generated_tokens"] > 0 and report["requests_per_s"] > 0


def test_bench_counts_status_codes_and_text_report(capsys, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\n\nb c\n", encoding="utf-8")
    servicer = FlakyServicer(failures=3, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with ServerThread(servicer) as s:
        rc, out, _ = run(capsys, "bench", "--server", s.address, "-c", "1", "-n", "8", "-i", str(src))
    assert rc == 1  # not every request succeeded
    assert "RESOURCE_EXHAUSTED: 3" in out and "OK: 5" in out and "requests:      8 (5 OK)" in out
    assert {r.texts[0] for r in servicer.requests} == {"a", "b c"}  # empty lines skipped


def test_bench_duration(server, capsys):
    rc, out, _ = run(capsys, "bench", "--server", server.address, "-c", "2", "--duration", "0.3", "--json")
    report = json.loads(out)
    assert rc == 0 and report["requests"] > 0 and 0.3 <= report["duration_s"] < 3


def test_translate_command_end_to_end_without_torch(server, tmp_path):
    """The installed console script, in a fresh process where importing torch would fail."""
    sitecustomize = tmp_path / "sitecustomize.py"
    sitecustomize.write_text("import sys\nsys.modules['torch'] = None  # any import of torch raises\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "mtserve.server.cli", "translate", "--server", server.address,
                           "ok then"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "OK THEN\n"
