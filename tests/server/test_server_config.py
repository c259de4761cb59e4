"""ServerConfig validation, the `mtserve serve` flags, and flag > env > default precedence."""

from __future__ import annotations

import pytest

from mtserve.server.cli import main
from mtserve.server.config import ModelSpec, ServerConfig, build_serve_parser, config_from_args, render_config


def config(argv: list[str], env: dict[str, str] | None = None) -> ServerConfig:
    return config_from_args(build_serve_parser().parse_args(argv), env or {})


def test_defaults():
    c = config([])
    assert (c.host, c.port, c.metrics_port, c.device, c.dtype, c.log_level) == (
        "0.0.0.0", 50051, 9090, "auto", "auto", "INFO")
    assert c.models == () and c.default_model_name is None
    assert c == ServerConfig()
    assert c.sources == {}


def test_flag_beats_env_beats_default():
    env = {"MTSERVE_PORT": "6000", "MTSERVE_MAX_BATCH_ROWS": "16", "MTSERVE_GRACE_SECONDS": "2.5"}
    c = config(["--port", "7000"], env)
    assert c.port == 7000 and c.sources["port"] == "flag"
    assert c.max_batch_rows == 16 and c.sources["max_batch_rows"] == "env MTSERVE_MAX_BATCH_ROWS"
    assert c.grace_seconds == 2.5
    assert c.max_queue == 1024 and "max_queue" not in c.sources


def test_every_flag_has_an_env_variable():
    parser = build_serve_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 20
    for action in flags:
        env = "MTSERVE_" + action.option_strings[0][2:].replace("-", "_").upper()
        assert env in action.help, (action.option_strings, action.help)


def test_models_from_flags_and_env():
    c = config(["--model", "en-de=/models/opus-mt-en-de", "--model", "/models/fr-en/"])
    assert c.models == (ModelSpec("en-de", "/models/opus-mt-en-de"), ModelSpec("fr-en", "/models/fr-en/"))
    assert c.default_model_name == "en-de"
    c = config([], {"MTSERVE_MODEL": "a=/m/a, b=/m/b", "MTSERVE_DEFAULT_MODEL": "b"})
    assert [m.name for m in c.models] == ["a", "b"] and c.default_model_name == "b"
    c = config(["--model", "x=/m/x"], {"MTSERVE_MODEL": "a=/m/a,b=/m/b"})  # the flag replaces the env list
    assert [m.name for m in c.models] == ["x"]


def test_model_spec_parsing():
    assert ModelSpec.parse("en-de=/a/b") == ModelSpec("en-de", "/a/b")
    assert ModelSpec.parse("v2=/a/opus=v2") == ModelSpec("v2", "/a/opus=v2")  # "=" inside a path
    with pytest.raises(ValueError, match="name 'opus=v2' must match"):
        ModelSpec.parse("/a/opus=v2")  # a bare DIR is named after it: not a valid name here
    assert ModelSpec.parse("relative/dir") == ModelSpec("dir", "relative/dir")
    with pytest.raises(ValueError, match="NAME=DIR"):
        ModelSpec.parse("en-de=")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 70000}, "port must be an integer in [0, 65535], got 70000"),
        ({"metrics_port": -1}, "metrics_port must be an integer in [0, 65535], got -1"),
        ({"port": 9000, "metrics_port": 9000}, "metrics_port 9000 must differ from port 9000"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"dtype": "fp8"}, "dtype must be one of auto, float32, float16, bfloat16, got 'fp8'"),
        ({"quantize": "int4"}, "quantize must be one of none, int8, got 'int4'"),
        ({"max_batch_rows": 0}, "max_batch_rows must be an integer >= 1, got 0"),
        ({"max_queue": 2.5}, "max_queue must be an integer >= 1, got 2.5"),
        ({"grace_seconds": -1}, "grace_seconds must be a number of seconds >= 0, got -1"),
        ({"max_connection_age_seconds": float("nan")}, "max_connection_age_seconds must be a number"),
        ({"log_level": "chatty"}, "log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'chatty'"),
        ({"models": ["a=/x", "a=/y"]}, "duplicate model name(s) ['a']"),
        ({"models": ["a=/x"], "default_model": "b"}, "default_model 'b' is not one of the models ['a']"),
        ({"host": ""}, "host must not be empty"),
    ],
)
def test_validation_quotes_the_value(kwargs, message):
    with pytest.raises(ValueError) as e:
        ServerConfig(**kwargs)
    assert message in str(e.value)


def test_env_errors_name_the_variable():
    with pytest.raises(ValueError, match=r"MTSERVE_PORT='abc'"):
        config([], {"MTSERVE_PORT": "abc"})
    with pytest.raises(ValueError, match=r"port must be .* got 99999 \(port from env MTSERVE_PORT\)"):
        config([], {"MTSERVE_PORT": "99999"})


def test_metrics_port_off_and_log_level_case():
    c = config(["--metrics-port", "off", "--log-level", "debug"])
    assert c.metrics_port is None and c.log_level == "DEBUG"


def test_effective_limits_never_exceed_capacity():
    c = ServerConfig(max_batch_rows=1, max_queue=3)
    assert (c.beam_size_limit, c.num_hypotheses_limit, c.texts_per_request_limit) == (1, 1, 3)
    c = ServerConfig()
    assert (c.beam_size_limit, c.num_hypotheses_limit, c.texts_per_request_limit) == (8, 8, 128)


def test_grpc_server_options():
    options = dict(ServerConfig(max_connection_age_seconds=30, max_connection_age_grace_seconds=5,
                                keepalive_time_seconds=0).grpc_server_options())
    assert options["grpc.max_connection_age_ms"] == 30_000
    assert options["grpc.max_connection_age_grace_ms"] == 5_000
    assert "grpc.keepalive_time_ms" not in options
    assert "grpc.max_connection_age_ms" not in dict(ServerConfig(max_connection_age_seconds=0).grpc_server_options())
    limits = dict(ServerConfig(max_message_bytes=2048, max_metadata_bytes=512, max_streams_per_connection=7,
                               max_connections=9, handshake_timeout_seconds=1.5, idle_connection_seconds=0)
                  .grpc_server_options())
    assert (limits["grpc.max_receive_message_length"], limits["grpc.max_metadata_size"],
            limits["grpc.max_concurrent_streams"], limits["grpc.max_allowed_incoming_connections"],
            limits["grpc.server_handshake_timeout_ms"], limits["grpc.so_reuseport"]) == (2048, 512, 7, 9, 1500, 0)
    assert "grpc.max_connection_idle_ms" not in limits
    assert options["grpc.max_connection_idle_ms"] == 600_000


def test_render_config_shows_values_and_sources():
    text = render_config(config(["--port", "1234", "--model", "en-de=/m"], {"MTSERVE_MAX_QUEUE": "10"}))
    lines = text.splitlines()
    assert "  port = 1234  (flag)" in lines
    assert "  max_queue = 10  (env MTSERVE_MAX_QUEUE)" in lines
    assert "  models = en-de=/m  (flag)" in lines
    assert "  device = auto" in lines
    assert "  default_model = en-de (the first model)" in lines
    assert "  metrics_port = off" in render_config(ServerConfig(metrics_port=None)).splitlines()


def test_serve_cli_rejects_bad_values(capsys, monkeypatch):
    monkeypatch.setenv("MTSERVE_DEVICE", "tpu")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "1"])
    assert e.value.code == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'tpu' (device from env MTSERVE_DEVICE)" in \
        capsys.readouterr().err


def test_threads_from_flag_or_env_and_validated():
    assert config([]).threads is None  # torch's default
    assert config(["--threads", "2"]).threads == 2
    assert config([], {"MTSERVE_THREADS": "3"}).threads == 3
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        ServerConfig(threads=0)
