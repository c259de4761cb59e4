"""Every Prometheus metric of the server, declared once, and the /metrics HTTP endpoint.

Naming follows the Prometheus conventions: prefix ``mtserve_``, base units
(seconds, bytes), ``_total`` on counters. Labels are few and bounded:

- ``model``: always the name of a loaded model, never a string from the request
  (requests naming an unknown model are counted with ``model=""``);
- ``code``: the gRPC status code, spelled as in the standard gRPC metrics
  (``OK``, ``InvalidArgument``, ``ResourceExhausted``, ...: see ``code_label``);
- ``reason`` on the rejection counter: the ``reason`` of the exception in errors.py;
- ``device`` on the GPU memory gauge, because memory belongs to a device, not a model;
- ``token`` on the token-call counter: a token's *name* from the token file, never the token.

No label carries a file-system path or anything else a request sends.

The standard ``grpc_server_*`` metrics of go-grpc-prometheus (filled by
``interceptors.MetricsInterceptor``) use that project's names, labels and
label values, so stock gRPC dashboards and alerts work unchanged.

Every server instance owns one ``Metrics`` with its own ``CollectorRegistry``,
so several servers can run in one process (as the tests do).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import start_http_server

# Latency buckets for translation, in seconds: a few ms (one short sentence on a
# GPU) to tens of seconds (a long document, beam search, on a loaded CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
# Waiting in the queue and the first token: from "admitted at the next step" upward.
SHORT_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One decoder step: ~1 ms on a GPU to a few hundred ms for a big CPU batch.
TOKEN_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Decoder rows per step; powers of two, as batch limits usually are.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# go-grpc-prometheus labels codes with Go's codes.Code.String(); stock dashboards and alerts match these.
_GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def code_label(code: grpc.StatusCode | None) -> str:
    """The label value for a status code (None, as ``context.code()`` gives on success, is OK)."""
    return _GO_CODE_NAMES[code if code is not None else grpc.StatusCode.OK]


class Metrics:
    """The metrics of one server instance, in their own registry.

    The attributes are the prometheus_client objects (use ``.labels(...)``);
    the methods below are the calls the engine and the service make.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        model, model_code = ["model"], ["model", "code"]

        # -- requests (observed by the service, per call) --
        self.request_duration = Histogram(
            "mtserve_request_duration_seconds",
            "Time from receiving a translation call to its last response message, by final status code.",
            model_code, buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            "mtserve_time_to_first_token_seconds",
            "Time from a text's (a sentence's, when split) arrival to its first generated token "
            "(queue wait and encoder pass included).",
            model, buckets=SHORT_LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "mtserve_time_per_output_token_seconds",
            "Mean time between a text's (a sentence's, when split) generated tokens after the first.",
            model, buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "mtserve_queue_wait_seconds",
            "Time a text (each sentence, when split) waited in the queue before it was admitted into the batch.",
            model, buckets=SHORT_LATENCY_BUCKETS, registry=r)
        self.requests_rejected = Counter(
            "mtserve_requests_rejected_total",
            "Translation calls that failed without a translation, by reason (invalid_argument, "
            "model_not_found, queue_full, caller_limit, draining, not_ready, engine_stopped, deadline, "
            "cancelled, internal).",
            ["model", "reason"], registry=r)
        self.input_tokens = Counter(
            "mtserve_input_tokens_total", "Source tokens (</s> included) of the texts admitted.",
            model, registry=r)
        self.generated_tokens = Counter(
            "mtserve_generated_tokens_total",
            "Tokens generated by the decoder, over all beams and samples.", model, registry=r)
        self.cache_lookups = Counter(
            "mtserve_translation_cache_lookups_total",
            "Sentences looked up in the translation cache (--cache-size), by result (hit: answered from it, "
            "miss: decoded, then kept).", ["model", "result"], registry=r)

        # -- the engine (set every step) --
        self.texts_running = Gauge(
            "mtserve_texts_running",
            "Texts decoding in the batch now (a call's texts count one per sentence).",
            model, registry=r)
        self.texts_waiting = Gauge(
            "mtserve_texts_waiting",
            "Texts waiting in the queue now (a call's texts count one per sentence).",
            model, registry=r)
        self.rows_in_use = Gauge(
            "mtserve_rows_in_use",
            "KV-cache rows held by running texts now (a text holds one row per beam or sample).",
            model, registry=r)
        self.batch_size = Histogram(
            "mtserve_decoder_batch_size",
            "Decoder rows (beams and samples of all running texts) per decoding step.",
            model, buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.kv_cache_usage = Gauge(
            "mtserve_kv_cache_usage_ratio",
            "Fraction of the KV-cache rows (--max-batch-rows) in use, 0 to 1.", model, registry=r)
        self.engine_up = Gauge(
            "mtserve_engine_up",
            "1 while the model's engine thread runs, 0 once it has died (the model is then NOT_SERVING).",
            model, registry=r)

        # -- models and device --
        self.model_info = Info(
            "mtserve_model", "A served model: languages, architecture, device and dtype.", model, registry=r)
        self.model_load_seconds = Gauge(
            "mtserve_model_load_seconds", "Time it took to load and warm up the model.", model, registry=r)
        self.token_calls = Counter(
            "mtserve_token_calls_total",
            "Calls that needed a bearer token, by the name of the token they carried (\"\": none, or not a "
            "valid one: UNAUTHENTICATED). Only with --auth-token-file.", ["token"], registry=r)
        self.gpu_memory_allocated = Gauge(
            "mtserve_gpu_memory_allocated_bytes",
            "Memory allocated by tensors on a CUDA device (torch.cuda.memory_allocated).",
            ["device"], registry=r)

        # -- the standard gRPC server metrics (go-grpc-prometheus names) --
        method = ["grpc_service", "grpc_method", "grpc_type"]
        self.grpc_started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", method, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*method, "grpc_code"], registry=r)
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled "
            "by the server.", method, buckets=LATENCY_BUCKETS, registry=r)
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
            method, registry=r)
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.",
            method, registry=r)

    # -- the calls the engine and the service make --------------------------------------------

    @property
    def _model_series(self) -> tuple[Any, ...]:
        """The metrics labelled by model alone: created when a model loads, removed when it is unloaded."""
        return (self.time_to_first_token, self.time_per_output_token, self.queue_wait, self.input_tokens,
                self.generated_tokens, self.texts_running, self.texts_waiting, self.rows_in_use, self.batch_size,
                self.kv_cache_usage)

    def add_model(self, model: str, info: Mapping[str, str], load_seconds: float) -> None:
        """Record a loaded model, and create its series at zero so dashboards show them before traffic."""
        self.model_info.labels(model=model).info(dict(info))
        self.model_load_seconds.labels(model=model).set(load_seconds)
        for metric in self._model_series:
            metric.labels(model=model)
        self.engine_up.labels(model=model).set(1)

    def remove_model(self, model: str) -> None:
        """An unloaded model: the series add_model made go (what it served stays in the request and token
        counters' other series until the process restarts)."""
        for metric in (self.model_info, self.model_load_seconds, *self._model_series, self.engine_up):
            with contextlib.suppress(KeyError):
                metric.remove(model)

    def observe_request(self, model: str, code: grpc.StatusCode | None, seconds: float) -> None:
        self.request_duration.labels(model=model, code=code_label(code)).observe(seconds)

    def count_cache_lookups(self, model: str, hits: int, misses: int) -> None:
        if hits:
            self.cache_lookups.labels(model, "hit").inc(hits)
        if misses:
            self.cache_lookups.labels(model, "miss").inc(misses)

    def reject(self, model: str, reason: str) -> None:
        """Count a call that failed without a translation (``reason`` from errors.Status)."""
        self.requests_rejected.labels(model=model, reason=reason).inc()

    def observe_text(self, model: str, *, queue_wait: float | None = None,
                     time_to_first_token: float | None = None, time_per_output_token: float | None = None,
                     input_tokens: int = 0) -> None:
        """Per-text timings, each when known (a text that generated one token has no time per token)."""
        if queue_wait is not None:
            self.queue_wait.labels(model=model).observe(queue_wait)
        if time_to_first_token is not None:
            self.time_to_first_token.labels(model=model).observe(time_to_first_token)
        if time_per_output_token is not None:
            self.time_per_output_token.labels(model=model).observe(time_per_output_token)
        if input_tokens:
            self.input_tokens.labels(model=model).inc(input_tokens)

    def observe_step(self, model: str, *, batch_rows: int, generated_tokens: int) -> None:
        """One decoder step: rows in the batch and tokens it generated (rows of live sequences)."""
        self.batch_size.labels(model=model).observe(batch_rows)
        if generated_tokens:
            self.generated_tokens.labels(model=model).inc(generated_tokens)

    def set_engine_state(self, model: str, *, waiting: int, running: int, rows_in_use: int, max_rows: int) -> None:
        self.texts_waiting.labels(model=model).set(waiting)
        self.texts_running.labels(model=model).set(running)
        self.rows_in_use.labels(model=model).set(rows_in_use)
        self.kv_cache_usage.labels(model=model).set(rows_in_use / max_rows if max_rows else 0.0)

    def engine_died(self, model: str) -> None:
        self.engine_up.labels(model=model).set(0)

    def count_token_call(self, token_name: str | None) -> None:
        self.token_calls.labels(token=token_name or "").inc()

    def set_gpu_memory(self, device: str, allocated_bytes: float) -> None:
        """Call only for CUDA devices, with ``torch.cuda.memory_allocated(device)`` (no torch here)."""
        self.gpu_memory_allocated.labels(device=device).set(allocated_bytes)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, as /metrics serves it."""
        return generate_latest(self.registry)


def reference_markdown() -> str:
    """Every metric the server exports, with its type, labels and meaning: docs/metrics.md
    (``python -m mtserve.server.metrics > docs/metrics.md``; tests/server/test_docs.py checks it)."""
    lines = ["# Metrics", "",
             "Every series `mtserve serve` exports on `/metrics` (generated from server/metrics.py: "
             "`python -m mtserve.server.metrics > docs/metrics.md`). Histograms also export `_bucket`, `_sum` "
             "and `_count`, counters end in `_total`.", "",
             "| metric | type | labels | meaning |", "|---|---|---|---|"]
    metrics = Metrics()
    collectors = [value for value in vars(metrics).values() if hasattr(value, "_labelnames")]
    for collector in sorted(collectors, key=lambda c: c._name):
        kind = collector._type
        name = collector._name + ("_total" if kind == "counter" else "_info" if kind == "info" else "")
        labels = ", ".join(f"`{label}`" for label in collector._labelnames) or "–"
        lines.append(f"| `{name}` | {kind} | {labels} | {' '.join(collector._documentation.split())} |")
    return "\n".join(lines) + "\n"


@dataclass
class MetricsServer:
    """A running /metrics HTTP endpoint (a daemon thread); ``port`` is the bound port."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve ``registry`` at http://host:port/metrics (port 0: any free port) in a daemon thread."""
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread)


__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "Metrics",
    "MetricsServer",
    "code_label",
    "start_metrics_server",
]


if __name__ == "__main__":
    print(reference_markdown(), end="")
