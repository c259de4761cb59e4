"""What a new user meets: errors that say what to do, and a CLI that survives real files."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mtserve.client import TranslationClient, TranslationError
from mtserve.engine import Translator
from mtserve.model.checkpoint import CheckpointError
from mtserve.server.cli import main
from mtserve.server.config import ServerConfig, build_serve_parser, config_from_args


def mtserve(*argv: str) -> list[str]:
    script = Path(sys.executable).with_name("mtserve")
    return [str(script), *argv] if script.exists() else [sys.executable, "-m", "mtserve.server.cli", *argv]


# -- errors that say what to do ---------------------------------------------------------------------


def test_a_model_directory_that_is_not_one_says_what_is_wrong(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "source.spm").write_bytes(b"x")
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    cases = {
        tmp_path / "missing": "no such model directory",
        empty: "the model directory is empty",
        no_config: "no config.json in the model directory",
        t5: "model_type 't5' is not supported; supported: marian",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as failed:
            Translator.load(path, device="cpu")
        assert str(path) in str(failed.value) and "tokenizer" not in str(failed.value)


def test_a_failed_start_says_why_and_nothing_about_draining(tmp_path: Path) -> None:
    done = subprocess.run(mtserve("serve", "--model", str(tmp_path / "nowhere"), "--port", "0", "--metrics-port",
                                  "off"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "start-up failed: " in done.stderr and "no such model directory" in done.stderr
    assert "draining" not in done.stderr and "stopped" not in done.stderr


def test_bad_values_from_the_environment_name_the_variable() -> None:
    args = build_serve_parser().parse_args([])
    with pytest.raises(ValueError, match=r"^MTSERVE_PORT='abc': expected a whole number, got 'abc'$"):
        config_from_args(args, {"MTSERVE_PORT": "abc"})
    with pytest.raises(ValueError, match=r"^MTSERVE_GRACE_SECONDS='soon': expected a number, got 'soon'$"):
        config_from_args(args, {"MTSERVE_GRACE_SECONDS": "soon"})
    with pytest.raises(ValueError, match=r"max_queue must be an integer >= 1, got 0 \(max_queue from env MTSERVE_"):
        config_from_args(args, {"MTSERVE_MAX_QUEUE": "0"})


def test_a_mistyped_flag_gets_the_nearest_one_without_the_usage(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        build_serve_parser().parse_args(["--max-batch-rowz", "8"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["mtserve serve: error: unknown flag --max-batch-rowz; did you mean --max-batch-rows?",
                                "(`mtserve serve --help` lists every flag)"]


def test_devices_and_dtypes(model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"got 'mps' \(Apple's mps is not supported"):
        ServerConfig(device="mps")
    from mtserve.engine import translator

    monkeypatch.setattr(translator, "cpu_has_fast_float16", lambda: False)
    with caplog.at_level(logging.WARNING):
        Translator.load(model_dirs["tiny"], device="cpu", dtype="float16")
    assert any("dtype float16 on this CPU" in r.getMessage() and "slower than float32" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(translator, "cpu_has_fast_float16", lambda: True)
    with caplog.at_level(logging.WARNING):
        Translator.load(model_dirs["tiny"], device="cpu", dtype="float16")
    assert not caplog.records


def test_client_errors_say_what_they_mean(helpers: Any) -> None:
    closed = f"127.0.0.1:{helpers.free_port()}"
    with TranslationClient(closed, retries=0, timeout=5) as client, pytest.raises(TranslationError) as refused:
        client.translate(["Hallo."])
    assert refused.value.hint == f"no mtserve server at {closed} (is `mtserve serve` running, on that port?)"
    assert refused.value.code.name == "UNAVAILABLE" and "Connection refused" in refused.value.details  # the raw one
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        target = f"127.0.0.1:{httpd.server_port}"
        with TranslationClient(target, retries=0, timeout=5) as client, pytest.raises(TranslationError) as wrong:
            client.list_models()
        assert str(wrong.value).startswith(f"{target} is not a gRPC server (the metrics port?)")
    finally:
        httpd.shutdown()


def test_version(capsys: Any) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mtserve 0.")


# -- a CLI that survives real files --------------------------------------------------------------------


@pytest.fixture()
def lines_file(tmp_path: Path) -> Path:
    """Nine lines: text, an empty line, a line over the server's 2,000 characters (line 5), more text."""
    lines = ["Tom reads.", "Mary eats the apple.", "", "The house is red.", "x" * 2100, "Tom sees Mary.",
             "   ", "a b c", "The end."]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _translate_file(server: Any, lines_file: Path, tmp_path: Path, capsys: Any,
                    *flags: str) -> tuple[int, list[str], str]:
    out = tmp_path / "out.txt"
    rc = main(["translate", "--server", server.address, "-i", str(lines_file), "-o", str(out), "--batch-size", "3",
               "--max-length", "8", *flags])
    err = capsys.readouterr().err
    return rc, out.read_text(encoding="utf-8").splitlines(), err


def test_on_error_fail_stops_at_the_file_line(server: Any, lines_file: Path, tmp_path: Path, capsys: Any) -> None:
    rc, out, err = _translate_file(server, lines_file, tmp_path, capsys)
    assert rc == 1
    assert f"{lines_file}:5: 2100 characters, at most 2000" in err and "texts[" not in err
    assert "stopped there" in err and "4 of 9 lines translated" in err
    assert len(out) == 4 and out[2] == ""  # the lines before it, the empty one kept


@pytest.mark.parametrize("mode", ["skip", "mark"])
def test_on_error_skip_and_mark_go_on(server: Any, lines_file: Path, tmp_path: Path, capsys: Any, mode: str) -> None:
    rc, out, err = _translate_file(server, lines_file, tmp_path, capsys, "--on-error", mode)
    assert rc == 0 and len(out) == 9
    assert out[4] == ("" if mode == "skip" else "[untranslated]")
    assert out[2] == "" and out[6] == ""  # empty and blank lines stay empty
    assert f"{lines_file}:5: 2100 characters" in err and "1 of 9 lines were refused" in err
    with TranslationClient(server.address) as client:  # the same output as translating the good lines alone
        good = [line for i, line in enumerate(lines_file.read_text().splitlines()) if i != 4]
        expected = [r.text for r in client.translate(good, max_length=8)]
    assert [line for i, line in enumerate(out) if i != 4] == expected


def _serve(helpers: Any, model_dirs: dict[str, Path], tmp_path: Path) -> tuple[Any, str]:
    port = helpers.free_port()
    process = helpers.ServeProcess(["--model", f"endless={model_dirs['endless']}", "--host", "127.0.0.1", "--port",
                                    str(port), "--metrics-port", "0", "--device", "cpu", "--grace-seconds", "1"],
                                   tmp_path / "serve.log")
    return process, f"127.0.0.1:{port}"


@pytest.mark.parametrize("how", ["server-gone", "ctrl-c"])
def test_an_interrupted_file_leaves_complete_lines_and_says_so(model_dirs: dict[str, Path], helpers: Any,
                                                                tmp_path: Path, how: str) -> None:
    source = tmp_path / "big.txt"
    source.write_text("".join(f"Tom reads book {i}.\n" for i in range(400)), encoding="utf-8")
    out = tmp_path / "out.txt"
    server, address = _serve(helpers, model_dirs, tmp_path)
    try:
        # --wait: the server was just started; the CLI waits for it to load instead of failing at once.
        cli = subprocess.Popen(mtserve("translate", "--server", address, "--wait", "120", "-i", str(source), "-o",
                                       str(out), "--batch-size", "4", "--concurrency", "1", "--max-length", "30",
                                       "--timeout", "20"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        helpers.wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 8, "some output")
        if how == "server-gone":
            server.process.kill()
        else:
            cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=120)
    finally:
        server.stop()
    written = out.read_text(encoding="utf-8")
    assert cli.returncode == (130 if how == "ctrl-c" else 1), err
    assert "Traceback" not in err
    assert written.endswith("\n") and 8 <= len(written.splitlines()) < 400  # complete lines only
    assert f"interrupted; {len(written.splitlines())} of 400 lines translated; the output so far is in {out}" in err
    if how == "server-gone":
        assert "UNAVAILABLE" in err


def test_stream_prints_each_line_as_it_finishes(server: Any) -> None:
    cli = subprocess.Popen(mtserve("translate", "--server", server.address, "--stream", "--max-length", "6"),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert cli.stdin is not None and cli.stdout is not None
    answers = []
    for line in ("Tom reads.", "Mary eats."):
        cli.stdin.write(line + "\n")
        cli.stdin.flush()
        started = time.monotonic()
        answers.append(cli.stdout.readline())  # answered before the next line is even sent
        assert time.monotonic() - started < 30
    cli.stdin.close()
    assert cli.wait(30) == 0
    with TranslationClient(server.address) as client:
        expected = [r.text for r in client.translate(["Tom reads.", "Mary eats."], max_length=6)]
    assert answers == [text + "\n" for text in expected]
