"""The serving peer: CTranslate2 behind a small async gRPC server on mtserve's own proto.

    python -m benchmarks.ct2_server --model DIR [--threads N] [--window-ms 5] [--max-batch 32]

This is what users who pick CTranslate2 for speed build around it: requests are collected for a short
window (``--window-ms`` after the first waiting text, or until ``--max-batch`` texts wait), then one
``translate_batch`` runs them all (CTranslate2 sorts them by length) on a worker thread, and the next
window collects while it runs. Texts with different decoding options go to different batches. It
answers Translate (and ListModels, for ``mtserve bench``), tokenizing with mtserve's tokenizer so both
servers decode the same token ids, and logs the same start-up lines as ``mtserve serve`` so
benchmarks/server_process.py can start it. It is fair, not naive: the window and batch size are flags,
and benchmarks.serving runs it with the values that gave its best throughput here (README, below).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mtserve.proto.api import pb2, pb2_grpc

log = logging.getLogger("benchmarks.ct2_server")


@dataclass
class _Pending:
    tokens: list[str]
    future: asyncio.Future[tuple[list[str], int]]
    arrived: float = field(default_factory=time.monotonic)


class Ct2Service(pb2_grpc.TranslationServiceServicer):
    def __init__(self, model_dir: Path, ct2_dir: Path, threads: int, window: float, max_batch: int) -> None:
        import ctranslate2

        from mtserve.model.tokenizers import MarianTokenizer

        from .engines import _ct2_vocabulary

        self.tokenizer = MarianTokenizer.from_dir(model_dir)
        self.translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type="float32",
                                                 intra_threads=threads, inter_threads=1)
        self.source_tokens = _ct2_vocabulary(ct2_dir, "source")
        self.target_ids = {token: i for i, token in enumerate(_ct2_vocabulary(ct2_dir, "target"))}
        self.window, self.max_batch = window, max_batch
        self.queues: dict[tuple[int, int], list[_Pending]] = defaultdict(list)
        self.wakeup = asyncio.Event()

    async def run_batches(self) -> None:
        """Forever: wait for work, let the window fill, translate one batch per option set, on a thread."""
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while any(self.queues.values()):
                options, waiting = max(self.queues.items(), key=lambda item: len(item[1]))
                if not waiting:
                    break
                wait = self.window - (time.monotonic() - waiting[0].arrived)
                if len(waiting) < self.max_batch and wait > 0:
                    await asyncio.sleep(wait)
                batch, self.queues[options] = waiting[: self.max_batch], waiting[self.max_batch:]
                beam_size, max_length = options
                results = await loop.run_in_executor(None, self._translate, [p.tokens for p in batch], beam_size,
                                                     max_length)
                for pending, result in zip(batch, results, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(result)

    def _translate(self, tokens: list[list[str]], beam_size: int, max_length: int) -> list[tuple[list[str], int]]:
        results = self.translator.translate_batch(
            tokens, beam_size=beam_size, max_decoding_length=max_length - 1, max_batch_size=self.max_batch,
            length_penalty=1.0, num_hypotheses=1)
        return [(r.hypotheses[0], len(r.hypotheses[0]) + 1) for r in results]

    async def Translate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        options = request.options
        key = (options.beam_size if options.HasField("beam_size") else 4,
               options.max_length if options.HasField("max_length") else 256)
        loop = asyncio.get_running_loop()
        pendings = []
        for text in request.texts:
            ids = self.tokenizer.encode(text)
            pending = _Pending([self.source_tokens[i] for i in ids], loop.create_future())
            self.queues[key].append(pending)
            pendings.append(pending)
        self.wakeup.set()
        results = []
        for index, pending in enumerate(pendings):
            target, output_tokens = await pending.future
            text = self.tokenizer.decode([self.target_ids[t] for t in target])
            results.append(pb2.TranslationResult(index=index, text=text, output_tokens=output_tokens,
                                                 input_tokens=len(pending.tokens)))
        return pb2.TranslateResponse(results=results, model="bench")

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb2.ListModelsResponse(models=[pb2.ModelInfo(name="bench", is_default=True)])


async def serve(args: argparse.Namespace) -> None:
    from .models import ModelSpec, ct2_model

    model = Path(args.model)
    ct2_dir = ct2_model(ModelSpec(model.name, model, str(model)))
    service = Ct2Service(model, ct2_dir, args.threads, args.window_ms / 1000, args.max_batch)
    server = grpc.aio.server()
    pb2_grpc.add_TranslationServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    batches = asyncio.create_task(service.run_batches())
    # The lines benchmarks/server_process.py waits for, as mtserve serve writes them.
    print(f"ctranslate2 peer: gRPC on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    print("ctranslate2 peer: serving model 'bench'; health SERVING", file=sys.stderr, flush=True)
    try:
        await server.wait_for_termination()
    finally:
        batches.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Marian model directory (converted for CTranslate2, cached)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2's intra_threads")
    parser.add_argument("--window-ms", type=float, default=5.0, help="how long a batch collects (%(default)s)")
    parser.add_argument("--max-batch", type=int, default=32, help="texts per translate_batch (%(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import signal

    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(args))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
