"""What the offline and serving benchmarks share: paths, input sentences, the device line, tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtserve.client.bench import SENTENCES

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_MODEL = REPO / "model" / "default"
DATA = REPO / "data" / "de-en"

# Used when data/de-en is absent (a fresh clone without the training data): varied lengths, cycled.
# The same sample `mtserve bench` sends.
BUILTIN_GERMAN = SENTENCES


def load_sentences(count: int) -> tuple[list[str], str]:
    """``count`` German source texts and where they came from.

    data/de-en's test-sentences.de first, then the multi-word (3+ words) entries of test.de that are not
    already in, in file order; the built-in sample (cycled) when those files are absent or too few.
    """
    texts: list[str] = []
    seen: set[str] = set()
    used: list[str] = []
    for name, min_words in (("test-sentences.de", 1), ("test.de", 3)):
        file = DATA / name
        if not file.is_file():
            continue
        used.append(f"data/de-en/{name}")
        for line in file.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and len(line.split()) >= min_words and line not in seen:
                seen.add(line)
                texts.append(line)
    origin = " + ".join(used)
    if len(texts) < count:
        missing = count - len(texts)
        texts += [BUILTIN_GERMAN[i % len(BUILTIN_GERMAN)] for i in range(missing)]
        origin = f"{origin} + built-in sample (cycled)" if origin else "built-in sample (cycled)"
    return texts[:count], origin


def default_threads() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_torch_threads(threads: int) -> None:
    """Intra-op threads for torch; inter-op to 1, as CTranslate2 runs with inter_threads=1."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work started: harmless
        torch.set_num_interop_threads(1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Device:
    """The machine a run measured: ``kind`` is cpu or cuda; ``tag`` names the results files."""

    kind: str
    cpu: str
    threads: int
    gpu: str | None
    torch: str
    versions: dict[str, str]

    @property
    def tag(self) -> str:
        if self.kind == "cuda" and self.gpu:
            return "cuda-" + re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")
        return f"cpu-{self.threads}threads"

    def record(self) -> dict[str, Any]:
        """The fields, and the tag, as the results' JSON records the device."""
        return self.__dict__ | {"tag": self.tag}

    def line(self) -> str:
        """One human line: what ran, on what."""
        where = f"GPU {self.gpu} (float16)" if self.kind == "cuda" else "CPU (float32)"
        extra = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        threads = f"{self.threads} thread" + ("s" if self.threads != 1 else "")
        return f"{where}; CPU {self.cpu}, {threads}; torch {self.torch}; {extra}"


def detect_device(threads: int, *, cpu_only: bool = False) -> Device:
    """The device the engines will use: CUDA when available (and not ``cpu_only``), else the CPU."""
    import torch

    cuda = torch.cuda.is_available() and not cpu_only
    versions: dict[str, str] = {}
    for name in ("transformers", "ctranslate2"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "missing"
    return Device(
        kind="cuda" if cuda else "cpu",
        cpu=cpu_model(),
        threads=threads,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        torch=torch.__version__,
        versions=versions,
    )


def git_revision() -> str:
    """The measured code: the repository's commit, with "+changes" when the working tree differs."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_results(stem: Path, report: str, data: Any) -> None:
    """A benchmark's results: the markdown report at STEM.md and the data at STEM.json."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(report, encoding="utf-8")
    write_json(stem.with_suffix(".json"), data)
