"""The server's configuration: a validated dataclass, the ``mtserve serve`` flags, and their env variables.

Every flag ``--some-flag`` can also come from the environment as
``MTSERVE_SOME_FLAG``; a flag wins over the environment, which wins over the
default. ``--model`` repeats; its env variable takes a comma-separated list.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from mtserve.client.argparsing import ArgumentParser, integer, number

ENV_PREFIX = "MTSERVE_"
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZE_MODES = ("none", "int8")  # as model/quantize.py; repeated so that the config needs no torch import
COMPILE_MODES = ("off", "on")  # as model/compiled_step.py, for the same reason
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: the name requests use, and its directory (Marian layout)."""

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME=DIR``, or ``DIR`` alone (named after its last path component)."""
        name, sep, path = text.partition("=")
        if not sep or not MODEL_NAME_RE.match(name):
            name, path = os.path.basename(os.path.normpath(text)), text
        if not path:
            raise ValueError(f"model {text!r}: expected NAME=DIR or DIR")
        if not MODEL_NAME_RE.match(name):
            raise ValueError(f"model {text!r}: name {name!r} must match {MODEL_NAME_RE.pattern}")
        return cls(name, path)

    def __str__(self) -> str:
        return f"{self.name}={self.path}"


@dataclass
class ServerConfig:
    """Everything ``mtserve serve`` can be told. Invalid values raise ValueError quoting them."""

    # Models to serve; none = the bundled default model. Strings "NAME=DIR" / "DIR" are accepted.
    models: Sequence[ModelSpec | str] = ()
    # Model used when a request names none; None = the first of `models`.
    default_model: str | None = None
    host: str = "0.0.0.0"
    port: int = 50051  # 0: any free port
    metrics_port: int | None = 9090  # 0: any free port; None: no /metrics endpoint
    # The HTTP API (LibreTranslate's endpoints, JSON, the translation page) on `host`; None: off.
    http_port: int | None = None
    # The metrics endpoint's own address: loopback unless an operator opens it (a Prometheus in another pod).
    metrics_host: str = "127.0.0.1"
    # TLS on the gRPC port: the server's certificate chain and key (PEM files); with tls_client_ca, mutual TLS
    # (clients must present a certificate that CA signed). All re-read on SIGHUP.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Bearer tokens (one per line, "TOKEN" or "NAME TOKEN"; re-read on SIGHUP): calls without one get
    # UNAUTHENTICATED, health checks stay open.
    auth_token_file: str | None = None
    # The Admin service (load and unload models at run time; server/admin.py); off unless asked for. With
    # tokens, only the tokens named in admin_tokens may call it.
    admin: bool = False
    admin_tokens: tuple[str, ...] = ()
    # gRPC reflection (grpcurl and friends list and describe the API); --no-reflection turns it off.
    no_reflection: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    quantize: str = "none"  # none | int8 (CPU only: int8 linear layers, faster and slightly less accurate)
    # The decoder step compiled with torch.compile, a graph per row bucket, all compiled before the server
    # reports SERVING (model/compiled_step.py: seconds per graph, memory per graph).
    compile: str = "off"  # off | on
    # The output layer computed for the target pieces each text's source allows, by the model's vmap.txt
    # (model/shortlist.py); models without one decode over their whole vocabulary.
    shortlist: bool = False
    # torch intra-op threads (None: torch's default, one per core). On a CPU shared with other work,
    # fewer threads than cores avoid oversubscription, which slows small decoder steps many times over.
    threads: int | None = None
    # KV-cache rows per model: running texts' beams and samples together (the decoder batch).
    max_batch_rows: int = 64
    # New source tokens admitted per step (the encoder pass of newcomers); one longer text still runs alone.
    max_batch_tokens: int = 8192
    # Texts (sequence groups) waiting per model before calls fail with RESOURCE_EXHAUSTED.
    max_queue: int = 1024
    # Sentences kept in the translation cache (server/translation_cache.py); 0: no cache.
    cache_size: int = 0
    max_texts_per_request: int = 128
    max_text_chars: int = 10_000
    # Characters in all texts of one call; checked before anything is tokenized.
    max_request_chars: int = 100_000
    # Texts in flight (waiting or running, all models) per caller: its token's name, else its address.
    # None: max_batch_rows + half of max_queue, so that one caller can fill the batch but not the queue.
    max_texts_per_caller: int | None = None
    max_beam_size: int = 8
    max_num_hypotheses: int = 8
    # Largest max_length a request may ask for (also capped by each model's own limit).
    max_length_limit: int = 512
    # On SIGTERM: how long calls in flight may take to finish before they are cancelled.
    grace_seconds: float = 20.0
    # Server-initiated HTTP/2 keepalive pings (0 = off) and how long to wait for their ack.
    keepalive_time_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Close connections after this long (0 = never) so clients reconnect and rebalance across replicas;
    # calls in flight on a closing connection get the grace period to finish.
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 60.0
    # Protocol limits: the largest request message, all headers of a call, concurrent calls (streams) per
    # connection, connections at once, the TLS/HTTP2 handshake, and connections idle this long are closed.
    max_message_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_streams_per_connection: int = 256
    max_connections: int = 1024
    handshake_timeout_seconds: float = 10.0
    idle_connection_seconds: float = 600.0
    log_level: str = "INFO"
    # text: one human-readable line per record; json: one JSON object per line (for log pipelines).
    log_format: str = "text"
    # Where each value came from ("flag", "env MTSERVE_X"); set by config_from_args, for the start-up log.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.models, str | ModelSpec):
            self.models = [self.models]
        self.models = tuple(m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in self.models)
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate model name(s) {duplicates}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {names}")
        for name in ("host", "metrics_host"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty, got {getattr(self, name)!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both, or neither for plaintext")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        self.admin_tokens = tuple(self.admin_tokens)
        if self.admin_tokens and not (self.admin and self.auth_token_file):
            raise ValueError("admin_tokens names tokens of auth_token_file that may call the Admin service: "
                             "it needs admin and auth_token_file")
        if self.admin and self.auth_token_file and not self.admin_tokens:
            raise ValueError("admin with auth_token_file needs admin_tokens: the names of the tokens that may "
                             "load and unload models")
        if self.max_texts_per_caller is None and isinstance(self.max_queue, int) and isinstance(
                self.max_batch_rows, int):
            self.max_texts_per_caller = self.max_batch_rows + max(1, self.max_queue // 2)
        _check_port("port", self.port)
        if self.metrics_port is not None:
            _check_port("metrics_port", self.metrics_port)
            if self.metrics_port == self.port != 0:
                raise ValueError(f"metrics_port {self.metrics_port} must differ from port {self.port}")
        if not DEVICE_RE.match(self.device):
            hint = " (Apple's mps is not supported: the engine is built and tested on CPUs and CUDA)" if (
                isinstance(self.device, str) and self.device.startswith("mps")) else ""
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}{hint}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.compile == "on" and self.quantize != "none":
            raise ValueError("--compile on and --quantize int8 cannot be combined: the compiled step runs float "
                             "weights")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")
        for name in ("max_batch_rows", "max_batch_tokens", "max_queue", "max_texts_per_request",
                     "max_text_chars", "max_request_chars", "max_texts_per_caller", "max_beam_size",
                     "max_num_hypotheses", "max_length_limit", "max_message_bytes", "max_metadata_bytes",
                     "max_streams_per_connection", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0 (0: no cache), got {self.cache_size!r}")
        for name in ("grace_seconds", "keepalive_time_seconds", "keepalive_timeout_seconds",
                     "max_connection_age_seconds", "max_connection_age_grace_seconds",
                     "handshake_timeout_seconds", "idle_connection_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        level = self.log_level.upper() if isinstance(self.log_level, str) else self.log_level
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        self.log_level = level
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")

    @property
    def default_model_name(self) -> str | None:
        """The model used when a request names none (None when serving the bundled default)."""
        if self.default_model is not None:
            return self.default_model
        return self.models[0].name if self.models else None

    # The effective request limits: a flag never promises more than the capacity behind it, so that
    # e.g. `--max-batch-rows 1` works without lowering the other limits too.

    @property
    def texts_per_request_limit(self) -> int:
        """The most texts in one call: all of them must fit in the waiting queue at once."""
        return min(self.max_texts_per_request, self.max_queue)

    @property
    def beam_size_limit(self) -> int:
        """The largest beam a request may ask for: every beam occupies a KV-cache row."""
        return min(self.max_beam_size, self.max_batch_rows)

    @property
    def num_hypotheses_limit(self) -> int:
        """The largest n-best a request may ask for (sampling gives each hypothesis a row)."""
        return min(self.max_num_hypotheses, self.max_batch_rows)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def grpc_server_options(self) -> list[tuple[str, int]]:
        """Channel arguments for ``grpc.aio.server(options=...)``."""
        options = [
            # The port is this server's alone: with SO_REUSEPORT (grpc's default) a second server on the same
            # port starts silently and takes half the connections.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout_seconds * 1000)),
            # Let clients keep idle connections alive with their own pings (every 10 s at most).
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if self.keepalive_time_seconds > 0:
            options += [
                ("grpc.keepalive_time_ms", int(self.keepalive_time_seconds * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_seconds * 1000)),
            ]
        if self.idle_connection_seconds > 0:
            options.append(("grpc.max_connection_idle_ms", int(self.idle_connection_seconds * 1000)))
        if self.max_connection_age_seconds > 0:
            options += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_seconds * 1000)),
            ]
        return options


def _check_port(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{name} must be an integer in [0, 65535], got {value!r}")


# -- command line and environment -----------------------------------------------------------------


def port_or_off(text: str) -> int | None:
    if text.strip().lower() in ("off", "none", "disabled", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a port number or 'off', got {text!r}") from None


def _models(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false (1/0, yes/no, on/off), got {text!r}")


@dataclass(frozen=True)
class _Flag:
    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    switch: bool = False  # a flag without a value (--no-reflection); its variable takes true/false

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


_FLAGS = (
    _Flag("model", _models, "a model to serve, NAME=DIR or DIR (repeat for several; env: comma-separated); "
          "none: the bundled default model", "NAME=DIR"),
    _Flag("default_model", str, "the model for requests that name none", "NAME"),
    _Flag("host", str, "address to listen on"),
    _Flag("port", integer, "gRPC port (0: any free port)", "PORT"),
    _Flag("metrics_port", port_or_off, "Prometheus /metrics HTTP port (0: any free port; off: none)", "PORT"),
    _Flag("http_port", port_or_off, "HTTP port: LibreTranslate's API, a JSON API and a translation page "
          "(0: any free port; off: none, the default)", "PORT"),
    _Flag("metrics_host", str, "address of the /metrics endpoint (0.0.0.0: every interface)", "HOST"),
    _Flag("tls_cert", str, "TLS: the server's certificate chain (PEM); re-read on SIGHUP", "FILE"),
    _Flag("tls_key", str, "TLS: the server's private key (PEM); re-read on SIGHUP", "FILE"),
    _Flag("tls_client_ca", str, "mutual TLS: clients must present a certificate this CA (PEM) signed", "FILE"),
    _Flag("auth_token_file", str, "bearer tokens, one per line (TOKEN or NAME TOKEN); re-read on SIGHUP", "FILE"),
    _Flag("admin", boolean, "serve the Admin service: load and unload models at run time", switch=True),
    _Flag("admin_tokens", _models, "names of the --auth-token-file tokens that may call the Admin service "
          "(comma-separated)", "NAMES"),
    _Flag("no_reflection", boolean, "do not serve gRPC reflection", switch=True),
    _Flag("device", str, "auto (cuda when there is one), cpu, cuda or cuda:N"),
    _Flag("dtype", str, "auto, float32, float16 or bfloat16"),
    _Flag("quantize", str, "none, or int8: int8 linear layers on the CPU (faster, slightly less accurate)"),
    _Flag("compile", str, "off, or on: the decoder step compiled with torch.compile, a graph per row count, "
          "compiled before the server reports SERVING (minutes; see benchmarks/README.md)"),
    _Flag("shortlist", boolean, "compute the output layer only for the target pieces a text's source allows, "
          "by the model's vmap.txt (CTranslate2's vocabulary map; python -m mtserve.training.shortlist makes one)",
          switch=True),
    _Flag("threads", integer, "torch CPU threads (default: one per core)", "N"),
    _Flag("max_batch_rows", integer, "KV-cache rows per model: beams and samples of all running texts", "N"),
    _Flag("max_batch_tokens", integer, "new source tokens admitted per decoding step", "N"),
    _Flag("max_queue", integer, "texts waiting per model before calls fail with RESOURCE_EXHAUSTED", "N"),
    _Flag("cache_size", integer, "sentences the translation cache keeps (least recently used go first; "
          "sampling without a seed is never cached; 0: no cache)", "N"),
    _Flag("max_texts_per_request", integer, "most texts in one call", "N"),
    _Flag("max_text_chars", integer, "most characters in one text", "N"),
    _Flag("max_request_chars", integer, "most characters in all texts of one call", "N"),
    _Flag("max_texts_per_caller", integer, "texts in flight per caller (token name, else address); default: "
          "--max-batch-rows + half of --max-queue", "N"),
    _Flag("max_beam_size", integer, "largest beam_size a request may ask for", "N"),
    _Flag("max_num_hypotheses", integer, "largest num_hypotheses a request may ask for", "N"),
    _Flag("max_length_limit", integer, "largest max_length a request may ask for", "N"),
    _Flag("grace_seconds", number, "on SIGTERM, time for calls in flight to finish", "S"),
    _Flag("keepalive_time_seconds", number, "interval of server keepalive pings (0: off)", "S"),
    _Flag("keepalive_timeout_seconds", number, "time to wait for a keepalive ack", "S"),
    _Flag("max_connection_age_seconds", number, "close connections after this long, to rebalance (0: never)",
          "S"),
    _Flag("max_connection_age_grace_seconds", number, "time calls on a closing connection may finish in", "S"),
    _Flag("max_message_bytes", integer, "largest request message", "BYTES"),
    _Flag("max_metadata_bytes", integer, "largest metadata (all headers) of a call", "BYTES"),
    _Flag("max_streams_per_connection", integer, "concurrent calls per HTTP/2 connection", "N"),
    _Flag("max_connections", integer, "connections at once", "N"),
    _Flag("handshake_timeout_seconds", number, "time a new connection has to complete its handshake", "S"),
    _Flag("idle_connection_seconds", number, "close connections with no call for this long (0: never)", "S"),
    _Flag("log_level", str, "DEBUG, INFO, WARNING, ERROR or CRITICAL", "LEVEL"),
    _Flag("log_format", str, "text, or json: one JSON object per line", "FORMAT"),
)
_DEFAULTS = {f.name: f.default for f in fields(ServerConfig) if f.name not in ("models", "sources")}
# What a default of None (or a computed one) means, for --help and the README's table.
_SHOWN_DEFAULTS = {
    "model": "the bundled model",
    "default_model": "the first --model",
    "threads": "one per core",
    "http_port": "off",
    "tls_cert": "none (plaintext)",
    "tls_key": "none",
    "tls_client_ca": "none (no client certificates)",
    "auth_token_file": "none (no tokens)",
    "no_reflection": "reflection on",
    "admin": "off",
    "shortlist": "off",
    "admin_tokens": "none",
    "max_texts_per_caller": "--max-batch-rows + half of --max-queue",
}


def build_serve_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the ``mtserve serve`` flags to ``parser`` (a new one when None) and return it.

    Flags not given are absent from the namespace (argparse.SUPPRESS), so that ``config_from_args``
    tells "not given" from any given value, None ("--metrics-port off") included.
    """
    if parser is None:
        parser = ArgumentParser(prog="mtserve serve", description="Serve translation models over gRPC.")
    for spec in _FLAGS:
        default = _SHOWN_DEFAULTS.get(spec.field, _DEFAULTS.get(spec.field))
        kwargs: dict[str, Any] = {
            "dest": spec.field,
            "default": argparse.SUPPRESS,
            "metavar": spec.metavar,
            "help": f"{spec.help} [env {spec.env}; default {default}]",
        }
        if spec.field == "model":
            kwargs.update(action="append", type=str)
        elif spec.switch:
            del kwargs["metavar"]
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = spec.parse
        parser.add_argument(spec.flag, **kwargs)
    return parser


def flags_markdown() -> str:
    """The table of every ``mtserve serve`` flag, its variable, default and meaning, as the README shows it
    (tests/server/test_docs.py checks that the README's table is this one)."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for spec in _FLAGS:
        flag = spec.flag + ("" if spec.switch else f" {spec.metavar or spec.field.upper()}")
        default = _SHOWN_DEFAULTS.get(spec.field, _DEFAULTS.get(spec.field))
        rows.append(f"| `{flag}` | `{spec.env}` | {default} | {spec.help} |")
    return "\n".join(rows)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServerConfig:
    """The effective config: flag, else ``MTSERVE_<FLAG>`` from ``env`` (os.environ), else the default.

    Raises ValueError naming the flag or variable and quoting the value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in _FLAGS:
        if hasattr(args, spec.field):
            values[spec.field], sources[spec.field] = getattr(args, spec.field), "flag"
        elif spec.env in env:
            try:
                values[spec.field] = spec.parse(env[spec.env])
            except ValueError as e:
                raise ValueError(f"{spec.env}={env[spec.env]!r}: {e}") from None
            sources[spec.field] = f"env {spec.env}"
    if "model" in values:
        values["models"] = values.pop("model")
        sources["models"] = sources.pop("model")
    try:
        config = ServerConfig(**values)
    except ValueError as e:
        # Say where a bad value came from when it was not a flag (the message starts with the field name).
        hint = "; ".join(f"{name} from {src}" for name, src in sources.items()
                         if src != "flag" and str(e).startswith(name))
        raise ValueError(f"{e}" + (f" ({hint})" if hint else "")) from None
    config.sources = sources
    return config


def render_config(config: ServerConfig, resolved: Mapping[str, str] | None = None) -> str:
    """The effective config, one ``name = value  (source)`` line per field, for the start-up log.
    `resolved` gives what a default turned into where the config cannot know it (threads)."""
    lines = []
    for f in fields(config):
        if f.name == "sources":
            continue
        value = getattr(config, f.name)
        if resolved is not None and f.name in resolved:
            shown = resolved[f.name]
        elif f.name == "models":
            shown = ", ".join(str(m) for m in value) if value else "(the bundled default model)"
        elif f.name == "default_model" and value is None:
            shown = f"{config.default_model_name} (the first model)" if config.models else "(the bundled model)"
        elif f.name == "metrics_port" and value is None:
            shown = "off"
        else:
            shown = str(value)
        source = config.sources.get(f.name)
        lines.append(f"  {f.name} = {shown}" + (f"  ({source})" if source else ""))
    return "\n".join(lines)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the exception if any, and the fields of
    an access-log record (``extra={"access": {...}}``) at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "access", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Process-wide logging for ``mtserve serve`` (the CLI calls it; libraries never do)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
