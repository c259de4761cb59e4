"""The docs are true: the README's flag table and docs/metrics.md are what the code says, and the README's
Python snippets run as written (against a real server where they need one)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from mtserve.server.config import flags_markdown
from mtserve.server.metrics import reference_markdown

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_readme_flag_table_is_the_parsers() -> None:
    table = README.split("<!-- flags:start", 1)[1].split("-->", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert table.strip() == flags_markdown().strip(), "regenerate it: python -c 'from mtserve.server.config " \
                                                     "import flags_markdown; print(flags_markdown())'"


def test_every_flag_is_in_the_help_with_a_real_default(capsys: Any) -> None:
    from mtserve.server.config import build_serve_parser

    help_text = build_serve_parser().format_help()
    for flag in re.findall(r"^\| `(--[a-z-]+)", flags_markdown(), re.MULTILINE):
        assert flag in help_text, flag
    assert "default None" not in help_text


def test_the_metric_reference_is_the_metrics_module() -> None:
    assert (REPO / "docs" / "metrics.md").read_text(encoding="utf-8") == reference_markdown(), \
        "regenerate it: python -m mtserve.server.metrics > docs/metrics.md"


def _python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def test_the_readme_python_snippets_run(server: Any, capsys: Any) -> None:
    snippets = _python_snippets()
    assert len(snippets) >= 3
    for snippet in snippets:
        code = snippet.replace('"localhost:50051"', repr(server.address))
        exec(compile(code, "README.md", "exec"), {})  # the README's own code
    printed = capsys.readouterr().out
    assert "Good morning!" in printed  # the offline snippet, on the bundled model
    assert " final " in printed  # the streaming snippet's results


def test_the_quickstart_works_as_written(helpers: Any, tmp_path: Path) -> None:
    """`mtserve serve` on the bundled model, then the README's commands "from another shell"."""
    block = README.split("Then, from another shell:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    port, metrics_port = helpers.free_port(), helpers.free_port()
    env = {**os.environ, "MTSERVE_PORT": str(port), "MTSERVE_METRICS_PORT": str(metrics_port),
           "MTSERVE_HOST": "127.0.0.1", "MTSERVE_SERVER": f"127.0.0.1:{port}"}
    server = helpers.ServeProcess([], tmp_path / "serve.log", env=env)  # `mtserve serve`, nothing more
    try:
        server.wait_serving(f"127.0.0.1:{port}")
        outputs = []
        for command in commands:
            command = command.replace("9090", str(metrics_port))
            done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=120,
                                  executable="/bin/bash")
            assert done.returncode == 0, (command, done.stderr)
            outputs.append(done.stdout)
    finally:
        server.stop()
    translate, models, metrics = outputs
    assert translate.splitlines()[0] == "Good morning!" and len(translate.splitlines()) == 2
    assert "default" in models and "de-en" in models
    assert "mtserve_texts_running" in metrics



def test_command_help_is_plain_text(capsys: Any) -> None:
    from mtserve.server.cli import main

    for command in ("bench", "translate", "models"):
        with contextlib.suppress(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text and ":class:" not in text and "default: None" not in text, command
