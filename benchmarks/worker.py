"""One engine in a process of its own, so that its peak memory is its own: load, warm up, time.

``python -m benchmarks.worker JOB.json RESULT.json`` (the offline benchmark writes the job). The
result holds the load time, the seconds of each timed pass over all sources, the generated tokens
(without ``</s>``), the outputs (for the agreement check), peak RSS and, on CUDA, peak GPU memory.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class MemoryPeak:
    """Peak RSS of this process (kernel's high-water mark, and a 10 ms sampler where that is missing);
    on CUDA, peak device memory in use above the level at start (sampled, so it sees CTranslate2's too)."""

    def __init__(self, cuda: bool) -> None:
        import psutil

        self.process = psutil.Process()
        self.cuda = cuda
        self.rss = self.process.memory_info().rss
        self.gpu_base = self._gpu_used() if cuda else 0
        self.gpu = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _gpu_used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.rss = max(self.rss, self.process.memory_info().rss)
            if self.cuda:
                self.gpu = max(self.gpu, self._gpu_used() - self.gpu_base)

    def stop(self) -> dict[str, float | None]:
        self._stop.set()
        self._thread.join()
        peak = self.rss
        try:
            import resource

            peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux
        except ImportError:
            pass
        gpu: float | None = None
        if self.cuda:
            import torch

            gpu = max(self.gpu, torch.cuda.max_memory_reserved()) / MIB
        return {"peak_rss_mib": peak / MIB, "peak_gpu_mib": gpu}


def run(job: dict[str, Any]) -> dict[str, Any]:
    from .engines import load_engine

    device, threads = job["device"], job["threads"]
    if not job["engine"].startswith("ctranslate2") or device == "cuda":  # CTranslate2 alone on CPU needs no torch
        from .common import set_torch_threads

        set_torch_threads(threads)
    memory = MemoryPeak(device == "cuda")
    started = time.perf_counter()
    engine = load_engine(job["engine"], Path(job["model_dir"]), job["ct2_dir"] and Path(job["ct2_dir"]),
                         device, threads)
    load_s = time.perf_counter() - started
    sources: list[list[int]] = job["sources"]
    prefixes: list[list[int]] | None = job.get("prefixes")
    args = (job["beam_size"], job["max_length"], job["min_length"], job["batch_size"], job.get("early_stopping", False))
    engine.generate(sources[: job["warmup"]], *args, prefixes[: job["warmup"]] if prefixes else None)
    seconds: list[float] = []
    outputs: list[list[int]] = []
    for _ in range(job["repeats"]):
        _synchronize(device)
        started = time.perf_counter()
        outputs = engine.generate(sources, *args, prefixes)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    return {
        "engine": job["engine"],
        "load_s": load_s,
        "seconds": seconds,
        "tokens": sum(len(o) for o in outputs),
        "outputs": outputs,
        **memory.stop(),
    }


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    job_file, result_file = argv if argv is not None else sys.argv[1:]
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    Path(result_file).write_text(json.dumps(run(job)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
