"""The Admin service on a real server: load a model, translate with it, unload it while a call is in flight
(the call finishes, later calls are told the model is unknown), health per model, and the refusals:
no --admin, a token --admin-tokens does not name, a bad path, a taken name, the default model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.client import TranslationClient, TranslationError
from mtserve.proto.api import pb2, pb2_grpc
from mtserve.server.health import model_health_name

ADMIN_TOKEN = "admin-token-0123456789"
USER_TOKEN = "user-token-0123456789"


@pytest.fixture(scope="module")
def admin_server(model_dirs: dict[str, Path], helpers: Any) -> Any:
    with helpers.running_server(helpers.server_config(model_dirs, "tiny", admin=True)) as running:
        yield running


def _health(address: str, service: str) -> Any:
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=10).status
        except grpc.RpcError as error:
            return error.code()


def test_load_translate_unload(admin_server: Any, model_dirs: dict[str, Path], offline: Any, helpers: Any) -> None:
    texts = ["Tom reads.", "Mary eats the red apple.", "The house is small."]  # the short model takes 32 tokens
    with TranslationClient(admin_server.address, timeout=120) as client:
        info = client.load_model("second", str(model_dirs["short"]))
        assert info.name == "second" and not info.is_default
        assert {m.name for m in client.list_models()} == {"tiny", "second"}
        assert _health(admin_server.address, model_health_name("second")) == health_pb2.HealthCheckResponse.SERVING
        results = client.translate(texts, "second", max_length=12)
        assert [r.text for r in results] == [t.text for t in offline("short").translate(texts, max_length=12)]
        drained = client.unload_model("second")
        assert drained == 0
        with pytest.raises(TranslationError) as unknown:
            client.translate(texts, "second")
        assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT and "unknown model 'second'" in str(unknown.value)
        assert [m.name for m in client.list_models()] == ["tiny"]
    assert _health(admin_server.address, model_health_name("second")) == grpc.StatusCode.NOT_FOUND
    metrics = admin_server.server.metrics.registry
    assert metrics.get_sample_value("mtserve_engine_up", {"model": "second"}) is None  # its series are gone


def test_a_call_in_flight_finishes_when_its_model_is_unloaded(admin_server: Any, model_dirs: dict[str, Path],
                                                             helpers: Any) -> None:
    with TranslationClient(admin_server.address, timeout=120) as client:
        client.load_model("endless", str(model_dirs["endless"]))
        engine = admin_server.engine("endless")
        outcome: dict[str, Any] = {}

        def long_call() -> None:
            with TranslationClient(admin_server.address, timeout=120) as other:
                outcome["result"] = other.translate(["Tom reads the book."], "endless", max_length=40)[0]

        with helpers.StepGate(engine) as gate:
            caller = threading.Thread(target=long_call)
            caller.start()
            helpers.wait_until(lambda: engine.scheduler.num_running == 1, "the call decoding")
            unloaded: dict[str, int] = {}
            unloader = threading.Thread(target=lambda: unloaded.setdefault("drained", client.unload_model("endless")))
            unloader.start()
            helpers.wait_until(lambda: "endless" not in admin_server.server.registry.models, "the model taken out")
            assert "drained" not in unloaded  # waiting for the call
            gate.open()
            caller.join(60)
            unloader.join(60)
    assert outcome["result"].output_tokens == 40  # it ran to its end
    assert unloaded["drained"] == 1
    assert not engine.alive


@pytest.mark.parametrize(("name", "path", "code", "message"), [
    ("bad name!", "tiny", grpc.StatusCode.INVALID_ARGUMENT, "name: 1 to 64 letters"),
    ("x", "/nonexistent", grpc.StatusCode.INVALID_ARGUMENT, "path: '/nonexistent' is not a directory"),
    ("x", "empty", grpc.StatusCode.INVALID_ARGUMENT, "path: cannot load a model from"),
    ("tiny", "tiny", grpc.StatusCode.ALREADY_EXISTS, "already serves a model named 'tiny'"),
])  # fmt: skip
def test_load_refusals_name_the_field(admin_server: Any, model_dirs: dict[str, Path], tmp_path: Path, name: str,
                                      path: str, code: grpc.StatusCode, message: str) -> None:
    where = {"tiny": str(model_dirs["tiny"]), "empty": str(tmp_path)}.get(path, path)
    with TranslationClient(admin_server.address, timeout=60) as client, pytest.raises(TranslationError) as failed:
        client.load_model(name, where)
    assert failed.value.code == code and message in str(failed.value)


def test_the_default_model_cannot_be_unloaded(admin_server: Any) -> None:
    with TranslationClient(admin_server.address) as client, pytest.raises(TranslationError) as failed:
        client.unload_model("tiny")
    assert failed.value.code == grpc.StatusCode.FAILED_PRECONDITION and "is the default model" in str(failed.value)


def test_no_admin_service_without_the_flag(server: Any) -> None:
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as failed:
        pb2_grpc.AdminStub(channel).ListModels(pb2.ListModelsRequest(), timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_only_admin_tokens_may_call_it(model_dirs: dict[str, Path], helpers: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops {ADMIN_TOKEN}\napp {USER_TOKEN}\n")
    config = helpers.server_config(model_dirs, "tiny", admin=True, auth_token_file=str(tokens), admin_tokens=["ops"])
    with helpers.running_server(config) as running:
        with TranslationClient(running.address, token=USER_TOKEN) as user, pytest.raises(TranslationError) as denied:
            user.load_model("second", str(model_dirs["short"]))
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED and "'app' may not call" in str(denied.value)
        with TranslationClient(running.address) as anonymous, pytest.raises(TranslationError) as unauthenticated:
            anonymous.unload_model("tiny")
        assert unauthenticated.value.code == grpc.StatusCode.UNAUTHENTICATED
        with TranslationClient(running.address, token=ADMIN_TOKEN, timeout=120) as ops:
            assert ops.load_model("second", str(model_dirs["short"]), make_default=True).is_default
            assert ops.translate(["Tom reads."])[0].model == "second"  # the new default
            assert ops.unload_model("tiny") == 0


def test_admin_tokens_need_tokens() -> None:
    from mtserve.server.config import ServerConfig

    with pytest.raises(ValueError, match="admin with auth_token_file needs admin_tokens"):
        ServerConfig(admin=True, auth_token_file="/some/file")
    with pytest.raises(ValueError, match="it needs admin and auth_token_file"):
        ServerConfig(admin_tokens=("ops",))
