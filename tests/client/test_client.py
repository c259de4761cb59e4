"""The sync and asyncio clients against real grpc.aio servers with fake servicers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from dummy_server import DummyServicer, FlakyServicer, ServerThread, SlowServicer

from mtserve.client import (
    AsyncTranslationClient,
    PartialResult,
    RetryPolicy,
    TranslationClient,
    TranslationError,
    TranslationResult,
)
from mtserve.client._common import channel_target

FAST_RETRIES = RetryPolicy(retries=3, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def server():
    with ServerThread(DummyServicer()) as s:
        yield s


# -- targets --------------------------------------------------------------------------------------


def test_channel_target_single_is_passed_through():
    assert channel_target("example.org:50051") == "example.org:50051"
    assert channel_target(["dns:///svc.ns:50051"]) == "dns:///svc.ns:50051"


def test_channel_target_several_become_a_static_list():
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert channel_target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["[::1]:1", "[::2]:2"]) == "ipv6:[::1]:1,[::2]:2"
    assert channel_target(["localhost:7", "127.0.0.1:8"]).startswith("ipv4:127.0.0.1:7,")


def test_channel_target_rejects_bad_input():
    with pytest.raises(ValueError, match="HOST:PORT"):
        channel_target(["127.0.0.1", "127.0.0.2:1"])
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        channel_target(["127.0.0.1:1", "[::1]:2"])


def test_retry_delays_grow_with_jitter_and_stop():
    policy = RetryPolicy(retries=5, initial_backoff=0.1, max_backoff=0.5)
    delays = list(policy.delays())
    assert len(delays) == 5
    caps = [0.1, 0.2, 0.4, 0.5, 0.5]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert len({round(d, 9) for d in [*policy.delays(), *policy.delays()]}) > 5  # jittered


# -- the sync client ------------------------------------------------------------------------------


def test_translate_round_trip(server):
    with TranslationClient(server.address) as client:
        results = client.translate(["hello world", "good morning"])
    assert [r.text for r in results] == ["HELLO WORLD", "GOOD MORNING"]
    assert [r.index for r in results] == [0, 1]
    assert results[0] == TranslationResult(index=0, text="HELLO WORLD", hypotheses=["HELLO WORLD"], scores=[],
                                           input_tokens=3, output_tokens=3, model="dummy")
    assert results[0].score is None


def test_translate_reports_translations_cut_at_max_length(server):
    with TranslationClient(server.address) as client:
        short, long = client.translate(["a b", "a b c d e"], max_length=4)
        assert client.translate("a b c d e")[0].max_length_reached is False
    assert (short.max_length_reached, long.max_length_reached) == (False, True)


def test_translate_sends_options_and_leaves_unset_ones_unset(server):
    with TranslationClient(server.address) as client:
        client.translate("a b", "m1", beam_size=4, seed=0, sampling_topp=0.9, length_penalty=0.0,
                         source_language="en", target_language="de")
    request = server.servicer.requests[-1]
    assert list(request.texts) == ["a b"] and request.model == "m1"
    assert (request.source_language, request.target_language) == ("en", "de")
    o = request.options
    assert o.beam_size == 4 and o.HasField("seed") and o.seed == 0  # an explicit 0 is sent
    assert o.HasField("length_penalty") and o.length_penalty == 0.0
    assert o.sampling_topp == pytest.approx(0.9)
    for unset in ("max_length", "num_hypotheses", "sampling_temperature", "sampling_topk"):
        assert not o.HasField(unset), unset


def test_translate_nbest_and_scores(server):
    with TranslationClient(server.address) as client:
        (result,) = client.translate(["x y"], num_hypotheses=3, return_scores=True)
        (plain,) = client.translate(["x y"], return_scores=True)
    assert result.hypotheses == ["X Y", "X Y #1", "X Y #2"]
    assert result.scores == [-0.5, -1.5, -2.5] and result.score == -0.5
    assert plain.hypotheses == ["X Y"] and plain.scores == [-0.5]


def test_translate_stream_yields_every_text_tagged_with_its_index(server):
    with TranslationClient(server.address) as client:
        items = list(client.translate_stream(["a", "b c", "d"]))
        with_partials = list(client.translate_stream(["one two three"], partial=True))
    assert all(isinstance(i, TranslationResult) for i in items)
    assert [i.index for i in items] == [2, 1, 0]
    assert {i.index: i.text for i in items} == {0: "A", 1: "B C", 2: "D"}
    assert server.servicer.requests[-1].partial_results
    assert with_partials[:-1] == [PartialResult(0, "ONE", 1, "dummy"), PartialResult(0, "ONE TWO", 2, "dummy")]
    assert with_partials[-1].text == "ONE TWO THREE"


def test_list_models(server):
    with TranslationClient(server.address) as client:
        models = client.list_models()
    assert [m.name for m in models] == ["dummy", "other"]
    m = models[0]
    assert (m.source_language, m.target_language, m.is_default) == ("en", "de", True)
    assert m.architecture.decoder_layers == 3 and m.architecture.parameter_count == 123_456
    assert (m.max_source_length, m.max_target_length, m.device, m.dtype) == (512, 256, "cpu", "float32")
    assert not models[1].is_default


def test_health(server):
    with TranslationClient(server.address) as client:
        assert client.health() == "SERVING"
        assert client.health("mtserve.v1.TranslationService") == "SERVING"
        with pytest.raises(TranslationError) as e:
            client.health("no.such.Service")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_error_carries_code_and_details(server):
    with TranslationClient(server.address, retry_policy=FAST_RETRIES) as client:
        before = server.servicer.calls
        with pytest.raises(TranslationError) as e:
            client.translate(["x"], model="invalid")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details == "texts[0]: has 12 characters, the limit is 10"
    assert "INVALID_ARGUMENT" in str(e.value)
    assert server.servicer.calls == before + 1  # not retried


def test_retries_unavailable_until_success():
    servicer = FlakyServicer(failures=2)
    with ServerThread(servicer) as s, TranslationClient(s.address, retry_policy=FAST_RETRIES) as client:
        assert [r.text for r in client.translate(["ok"])] == ["OK"]
    assert servicer.calls == 3


def test_retries_give_up_after_the_limit():
    servicer = FlakyServicer(failures=10)
    policy = RetryPolicy(retries=2, initial_backoff=0.01, max_backoff=0.01)
    with ServerThread(servicer) as s, TranslationClient(s.address, retry_policy=policy) as client, \
            pytest.raises(TranslationError) as e:
        client.translate(["x"])
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and e.value.details == "failure 3 of 10"
    assert servicer.calls == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL])
def test_other_codes_are_not_retried(code):
    servicer = FlakyServicer(failures=1, code=code)
    with ServerThread(servicer) as s, TranslationClient(s.address, retry_policy=FAST_RETRIES) as client, \
            pytest.raises(TranslationError) as e:
        client.translate(["x"])
    assert e.value.code == code and servicer.calls == 1


def test_stream_is_retried_before_its_first_message():
    servicer = FlakyServicer(failures=1)
    with ServerThread(servicer) as s, TranslationClient(s.address, retry_policy=FAST_RETRIES) as client:
        assert sorted(r.text for r in client.translate_stream(["a", "b"])) == ["A", "B"]
    assert servicer.calls == 2


def test_connection_refused_is_retried_then_raised():
    with ServerThread(DummyServicer()) as s:
        address = s.address
    # Nothing listens there now: every attempt is UNAVAILABLE.
    policy = RetryPolicy(retries=2, initial_backoff=0.05, max_backoff=0.05)
    t0 = time.monotonic()
    with TranslationClient(address, retry_policy=policy, timeout=5) as client, \
            pytest.raises(TranslationError) as e:
        client.translate(["x"])
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - t0 >= 0.05  # it did back off


def test_deadline():
    with ServerThread(SlowServicer()) as s, TranslationClient(s.address, timeout=0.3) as client:
        t0 = time.monotonic()
        with pytest.raises(TranslationError) as e:
            client.translate(["x"])
        assert time.monotonic() - t0 < 3
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(TranslationError) as e:
            client.translate(["x"], timeout=0.1)  # per call
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_round_robin_over_two_servers():
    a, b = DummyServicer("a"), DummyServicer("b")
    with ServerThread(a) as sa, ServerThread(b) as sb, \
            TranslationClient([sa.address, sb.address]) as client:
        models = [client.translate(["x"])[0].model for _ in range(20)]
    assert a.calls > 0 and b.calls > 0, models
    assert a.calls + b.calls == 20
    assert {"a", "b"} == set(models)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_root_certificates(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)

    async def serve_and_call() -> list[str]:
        server = grpc.aio.server()
        from mtserve.proto.api import pb2_grpc

        pb2_grpc.add_TranslationServiceServicer_to_server(DummyServicer(), server)
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        port = server.add_secure_port("localhost:0", creds)
        await server.start()
        try:
            async with AsyncTranslationClient(f"localhost:{port}", root_certificates=cert) as client:
                texts = [r.text for r in await client.translate(["secure"])]
            async with AsyncTranslationClient(f"localhost:{port}", timeout=2, retries=0) as plain:
                with pytest.raises(TranslationError):  # plaintext to a TLS port fails
                    await plain.translate(["x"])
            return texts
        finally:
            await server.stop(None)

    assert asyncio.run(serve_and_call()) == ["SECURE"]


# -- the asyncio client ---------------------------------------------------------------------------


def test_async_client_round_trip_stream_models_health(server):
    async def main() -> None:
        async with AsyncTranslationClient(server.address) as client:
            results = await client.translate(["hello", "world"], beam_size=2)
            assert [r.text for r in results] == ["HELLO", "WORLD"]
            assert server.servicer.requests[-1].options.beam_size == 2
            items = [i async for i in client.translate_stream(["a", "b"], partial=True)]
            assert sorted((i.index, i.text) for i in items) == [(0, "A"), (1, "B")]
            assert [m.name for m in await client.list_models()] == ["dummy", "other"]
            assert await client.health() == "SERVING"
            with pytest.raises(TranslationError) as e:
                await client.translate(["x"], model="invalid")
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(main())


def test_async_client_retries_unavailable_only():
    flaky, refusing = FlakyServicer(failures=2), FlakyServicer(failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)

    async def main(address_ok: str, address_full: str) -> None:
        async with AsyncTranslationClient(address_ok, retry_policy=FAST_RETRIES) as client:
            assert [r.text for r in await client.translate(["ok"])] == ["OK"]
        async with AsyncTranslationClient(address_full, retry_policy=FAST_RETRIES) as client:
            with pytest.raises(TranslationError) as e:
                await client.translate(["x"])
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "failure 1 of 1" in e.value.details

    with ServerThread(flaky) as a, ServerThread(refusing) as b:
        asyncio.run(main(a.address, b.address))
    assert flaky.calls == 3 and refusing.calls == 1
