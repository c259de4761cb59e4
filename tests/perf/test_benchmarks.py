"""Smoke runs of the benchmark harness on a tiny random model (``pytest -m perf``).

They check that the commands run end to end and write their results, and that mtserve and
Transformers agree token for token; they never assert timings.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.perf
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _bench_extra() -> None:
    """Checked per test, not at import: the default run deselects these tests and must not skip them."""
    missing = [m for m in ("transformers", "ctranslate2", "matplotlib", "psutil") if not importlib.util.find_spec(m)]
    if missing:
        pytest.fail(f"the perf tests need the bench extra (pip install -e '.[bench]'); missing: {missing}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_offline_tiny(tmp_path: Path) -> None:
    done = _run("benchmarks.offline", "--shape", "tiny", "--models", "base", "--sentences", "6", "--repeats", "1",
                "--warmup", "2", "--threads", "1", "--max-length", "32", "--cpu", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "cpu-1threads-offline.json").read_text())
    engines = {(m["engine"], m["beam_size"]) for m in data["measurements"] if not m["error"]}
    assert engines == {(e, b) for e in ("mtserve", "transformers", "ctranslate2") for b in (4, 1)}
    for row in data["agreement"]:
        # mtserve = transformers but for a tie: these random tiny weights give near-uniform logits, and on one
        # machine </s> and another token tied to 1e-6 in one sentence (mtserve = CTranslate2 there). Token
        # parity on weights without near-ties is tests/model/test_parity.py's.
        assert row[2].startswith(("6/6", "5/6")), row
    assert (tmp_path / "cpu-1threads-offline.png").stat().st_size > 0
    assert "| random-tiny | beam 4 | mtserve |" in (tmp_path / "cpu-1threads-offline.md").read_text()


def test_serving_quick_tiny(tmp_path: Path) -> None:
    model = REPO / "benchmarks" / ".cache" / "random-tiny"
    if not (model / "config.json").is_file():
        pytest.skip("the tiny model is built by test_offline_tiny")
    done = _run("benchmarks.serving", "--model", str(model), "--quick", "--requests", "32", "--warmup", "4",
                "--threads", "1", "--device", "cpu", "--max-length", "32", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "cpu-1threads-serving-quick.json").read_text())
    assert [(p["config"], p["concurrency"], p["ok"]) for p in data["points"]] == [
        ("batched", 32, 32), ("max-batch-rows 1", 32, 32)]
    assert "throughput batched / max-batch-rows 1" in (tmp_path / "cpu-1threads-serving-quick.md").read_text()


def test_step_against_the_bandwidth_floor(tmp_path: Path) -> None:
    done = _run("benchmarks.step", "--models", "default", "--steps", "5", "--threads", "1", "--cpu",
                "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "cpu-1threads-step.json").read_text())
    [result] = data["results"]
    assert result["model"] == "default" and data["bandwidth"] > 0
    # Weights read per step: at least the output projection (8,000 x 256 float32) and below the whole model.
    assert 8000 * 256 * 4 < result["bytes"] < result["parameters"] * 4
    assert 0 < result["floor"] < result["decode_step"] <= result["engine_step"] * 1.5


def test_int8_kernels_compute_the_layer(tmp_path: Path) -> None:
    done = _run("benchmarks.int8_kernels", "--rows", "1", "32", "--steps", "3", "--threads", "1",
                "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "cpu-1threads-int8-kernels.json").read_text())
    assert len(data["measurements"]) == 16
    for m in data["measurements"]:
        assert m["float32_s"] > 0 and "dynamic_s" in m, m
        # Each kernel that ran computes the layer, up to int8 rounding.
        assert all(m[key] < 0.05 for key in m if key.endswith("_error")), m


def test_the_gpu_script_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu.sh --dry-run: the GPU lease's one command, every step on this CPU (tiny and short)."""
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**__import__("os").environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-2000:]
    steps = [line for line in done.stdout.splitlines() if line.startswith("== ") and ": exit " in line]
    assert len(steps) == 4 and all(": exit 0 after" in line for line in steps), steps
