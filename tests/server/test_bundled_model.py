"""With no --model, the server serves the bundled German→English model under the name "default"."""

from __future__ import annotations

from typing import Any

import grpc

from mtserve.engine import Translator
from mtserve.proto.api import pb2, pb2_grpc
from mtserve.server.config import ServerConfig
from mtserve.server.registry import bundled_model_spec


def test_no_model_flag_serves_the_bundled_model_like_offline_translation(helpers: Any):
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None, device="cpu", log_level="WARNING")
    texts = ["Guten Morgen!", "Wo ist der Bahnhof?"]
    expected = [t.text for t in Translator.load(bundled_model_spec().path, device="cpu").translate(texts)]
    with helpers.running_server(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        models = stub.ListModels(pb2.ListModelsRequest(), timeout=30).models
        assert [(m.name, m.source_language, m.target_language, m.is_default) for m in models] == [
            ("default", "de", "en", True)
        ]
        response = stub.Translate(pb2.TranslateRequest(texts=texts), timeout=60)
        assert response.model == "default"
        assert [r.text for r in response.results] == expected
        assert all(expected)
