"""Fixtures for the server's integration tests: tiny random Marian models and real servers on free ports.

Models are built with mtserve's own ``Transformer`` and ``save_model`` (so no Transformers import, which
costs seconds) next to a real tokenizer from ``tests/model/_tokenizer_fixtures.py``. Three kinds:

- ``tiny``: peaked random weights and a ``</s>`` logit bias near the top, so texts end at varied lengths;
- ``endless``: ``</s>`` is never chosen before ``max_length`` (its bias is -1e4), so every text decodes to
  exactly ``max_length`` tokens: the long requests of the head-of-line, cancellation and drain tests;
- ``short``: like ``tiny`` with ``max_position_embeddings`` 32, for the long-text splitting tests.

A server runs in process (:class:`ServerThread`: its own thread and asyncio loop, so the tests stay plain
synchronous code with blocking gRPC stubs) or as a ``mtserve serve`` subprocess where the process matters.
:class:`StepGate` holds the engine before its next decoder step, which makes "in flight" and "waiting"
states deterministic without sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.engine.translator import Translation, Translator
from mtserve.model.checkpoint import save_model
from mtserve.model.config import ModelConfig
from mtserve.model.tokenizers import MarianTokenizer
from mtserve.model.transformer import Transformer
from mtserve.server.app import MtserveServer
from mtserve.server.config import ServerConfig
from mtserve.server.engine_thread import EngineThread

T = TypeVar("T")

#: Seconds any bounded wait in these tests may take before it fails (generous: 2 busy cores).
WAIT_SECONDS = 30.0
#: Seconds a `mtserve serve` subprocess may take to report SERVING.
STARTUP_SECONDS = 120.0

# Model shapes: small enough that a decoder step takes a millisecond or two on a CPU.
_ARCH: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "dropout": 0.0,
}


def _tokenizer_fixtures() -> Any:
    """tests/model/_tokenizer_fixtures.py, the builder of real Marian tokenizer files."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model"))
    try:
        import _tokenizer_fixtures
    finally:
        sys.path.pop(0)
    return _tokenizer_fixtures


def _build_tokenizer_dir(path: Path) -> None:
    _tokenizer_fixtures().build_tokenizer_dir(path, vocab_size=150)


def sample_texts(count: int, seed: int = 5) -> list[str]:
    """`count` English-ish texts from the tokenizer fixture's corpus generator (deterministic); some hold
    several sentences."""
    return list(_tokenizer_fixtures().source_corpus(count, seed=seed))


def sample_sentences(count: int, seed: int = 5) -> list[str]:
    """`count` texts of one sentence each: one engine text per text, for tests that count them."""
    from mtserve.engine.segment import split_sentences

    sentences = [t for t in sample_texts(10 * count, seed) if len(split_sentences(t)) == 1][:count]
    assert len(sentences) == count
    return sentences


def build_model_dir(
    path: Path,
    *,
    seed: int = 0,
    max_positions: int = 128,
    endless: bool = False,
    init_std: float = 0.3,
    embedding_std: float = 0.1,
    eos_boost: float = 0.3,
) -> Path:
    """Write a random Marian model with a real tokenizer at ``path``; returns ``path``.

    Linear weights are N(0, init_std), embeddings N(0, embedding_std) (peaked distributions: no near-ties,
    so batching cannot flip a choice); the output bias is N(0, 1) with the ``</s>`` entry at the top plus
    ``eos_boost`` (with seed 0 texts end at lengths from 0 to max_length), or at -1e4 with ``endless``
    (texts run to max_length).
    """
    _build_tokenizer_dir(path)
    tokenizer = MarianTokenizer.from_dir(path)
    config = ModelConfig(
        vocab_size=tokenizer.source_vocab_size,
        decoder_vocab_size=tokenizer.target_vocab_size,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_id,
        decoder_start_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        forced_eos_token_id=tokenizer.eos_id,
        **_ARCH,
    )
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        # Transformers' Marian initialisation with larger stds: biases 0, layer norms the identity.
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * init_std)
            if isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * embedding_std)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.zero_()
        bias = torch.randn(model.final_logits_bias.shape, generator=generator)
        bias[0, config.eos_token_id] = -1e4 if endless else bias[0].max() + eos_boost
        model.final_logits_bias.copy_(bias)
    save_model(model, config, path)
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> model directory, for the kinds described in the module docstring."""
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny": build_model_dir(root / "tiny", seed=0, max_positions=128),
        "endless": build_model_dir(root / "endless", seed=1, max_positions=256, endless=True),
        "short": build_model_dir(root / "short", seed=2, max_positions=32),
    }


@pytest.fixture(scope="session")
def offline(model_dirs: dict[str, Path]) -> Callable[[str], Translator]:
    """name -> a Translator of that model, loaded on its own (not the server's), for reference outputs."""
    loaded: dict[str, Translator] = {}

    def get(name: str) -> Translator:
        if name not in loaded:
            loaded[name] = Translator.load(model_dirs[name], device="cpu")
        return loaded[name]

    return get


def expected_output_tokens(translation: Translation, max_length: int) -> int:
    """What the server reports as output_tokens for an offline translation: </s> counts when generated (each
    sentence's, for a text of several)."""
    if not translation.token_ids and not translation.input_tokens:
        return 0  # an empty text: nothing decoded
    return translation.output_tokens


# -- waiting without sleeping as an assertion --------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll `predicate` until it is true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port that was free a moment ago (for subprocesses that need the port on the command line)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- an in-process server ----------------------------------------------------------------------------


class ServerThread:
    """An :class:`MtserveServer` running on its own asyncio loop in a background thread."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        prepare: Callable[[MtserveServer], None] | None = None,
        wait: bool = True,
    ) -> None:
        """Create the server (then call `prepare` on it) and start it; with `wait`, until it serves."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self._thread.start()
        self.stopped = False
        self.server = self.run(self._create(config))
        if prepare is not None:
            prepare(self.server)
        self.started = self.submit(self.server.start())
        if wait:
            self.started.result(120)

    @staticmethod
    async def _create(config: ServerConfig) -> MtserveServer:
        return MtserveServer(config)  # grpc.aio binds a server to the loop it is created on

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = WAIT_SECONDS) -> T:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        """Start `coroutine` on the server's loop; returns a concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def engine(self, model: str) -> EngineThread:
        return self.server.registry.models[model].engine

    def stop(self, grace: float = 5.0) -> None:
        if not self.stopped:
            self.stopped = True
            self.run(self.server.stop(grace), timeout=grace + WAIT_SECONDS)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_SECONDS)
        self.loop.close()


def server_config(model_dirs: dict[str, Path], *names: str, **overrides: Any) -> ServerConfig:
    """A config serving `names` (the first is the default) on free ports of 127.0.0.1, on the CPU."""
    values: dict[str, Any] = {
        "models": [f"{name}={model_dirs[name]}" for name in names],
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "device": "cpu",
        "log_level": "WARNING",
        **overrides,
    }
    return ServerConfig(**values)


@contextlib.contextmanager
def running_server(config: ServerConfig) -> Iterator[ServerThread]:
    server = ServerThread(config)
    try:
        yield server
    finally:
        server.stop()


# The shared server's limits, small enough that the validation tests can exceed them cheaply.
SHARED_LIMITS: dict[str, Any] = {"max_texts_per_request": 8, "max_text_chars": 2000, "max_batch_rows": 64}


@pytest.fixture(scope="session")
def server(model_dirs: dict[str, Path]) -> Iterator[ServerThread]:
    """One server for the tests that do not change its state: tiny (default), endless and short."""
    with running_server(server_config(model_dirs, "tiny", "endless", "short", **SHARED_LIMITS)) as running:
        yield running


@pytest.fixture()
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


# -- holding the engine ------------------------------------------------------------------------------


class StepGate:
    """Holds an engine's thread before each decoder pass until :meth:`open` (or the test ends).

    While held, the engine has already applied what the scheduler chose for that step (aborts and
    admissions), so the test can see a request "running" (or others "waiting") for as long as it needs,
    without timing assumptions. It rides on the core's test-only ``inject`` hook.
    """

    def __init__(self, engine: EngineThread) -> None:
        self.engine = engine
        self.entered = threading.Event()
        self._open = threading.Event()
        self._allowed = threading.Semaphore(0)
        self._previous = engine.core.inject

    def __enter__(self) -> StepGate:
        previous = self._previous

        def gate(phase: str, texts: Any) -> None:
            if phase == "decode":
                self.entered.set()
                deadline = time.monotonic() + WAIT_SECONDS * 2
                while not self._open.is_set() and time.monotonic() < deadline:
                    if self._allowed.acquire(timeout=0.005):
                        break
            if previous is not None:
                previous(phase, texts)

        self.engine.core.inject = gate
        return self

    def open(self) -> None:
        self._open.set()

    def allow(self, steps: int) -> None:
        """Let the engine take `steps` more decoder passes, then hold it again."""
        self._allowed.release(steps)

    def __exit__(self, *exc: object) -> None:
        self._open.set()
        self.engine.core.inject = self._previous

    def wait_entered(self) -> None:
        if not self.entered.wait(WAIT_SECONDS):
            pytest.fail("the engine never reached a decoder step")


def mtserve_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("mtserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtserve.server.cli"]


class ServeProcess:
    """A `mtserve serve` subprocess whose output goes to a log file (read back when a test fails)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [*mtserve_command(), "serve", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, address: str, helpers: Any = None) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                if self.process.poll() is not None:
                    pytest.fail(f"mtserve serve exited with {self.process.returncode}:\n{self.log()}")
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.RpcError:
                    return False
                return response.status == health_pb2.HealthCheckResponse.SERVING

            wait_until(serving, "mtserve serve to report SERVING", timeout=STARTUP_SECONDS)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._log.close()



class Helpers:
    """The helpers above, for test modules (a conftest is not importable by name)."""

    ServerThread = ServerThread
    ServeProcess = ServeProcess
    StepGate = StepGate
    wait_until = staticmethod(wait_until)
    free_port = staticmethod(free_port)
    server_config = staticmethod(server_config)
    running_server = staticmethod(running_server)
    build_model_dir = staticmethod(build_model_dir)
    sample_texts = staticmethod(sample_texts)
    sample_sentences = staticmethod(sample_sentences)
    expected_output_tokens = staticmethod(expected_output_tokens)
    WAIT_SECONDS = WAIT_SECONDS
    SHARED_LIMITS = SHARED_LIMITS


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    return Helpers


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The load tests' figures (tests/server/_load.py's REPORT), with the machine they were measured on."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from _load import REPORT, cpu_line
    finally:
        sys.path.pop(0)
    if REPORT.rows:
        terminalreporter.section("load test figures")
        terminalreporter.write_line(f"machine: {cpu_line()}")
        for test, figures in REPORT.rows:
            terminalreporter.write_line(f"{test}: {figures}")
