"""The HTTP front door (--http-port) of a real server on the bundled German->English model: LibreTranslate's
API through LibreTranslate's own Python client (libretranslatepy) and raw requests, the JSON API beside it,
and hostile input; every answer is compared with what gRPC gives for the same text."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from libretranslatepy import LibreTranslateAPI

from mtserve.client import TranslationClient
from mtserve.engine.segment import split_sentences
from mtserve.server.config import ServerConfig
from mtserve.server.http.app import body_limit

TOKEN = "s3cret-token-for-http"


def http_config(**overrides: Any) -> ServerConfig:
    return ServerConfig(**{"host": "127.0.0.1", "port": 0, "metrics_port": 0, "http_port": 0, "device": "cpu",
                           "threads": 1, "log_level": "WARNING", **overrides})


@pytest.fixture(scope="module")
def server(helpers: Any) -> Iterator[Any]:
    with helpers.running_server(http_config()) as running:
        yield running


@pytest.fixture(scope="module")
def base(server: Any) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


def call(base: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text, status = error.read().decode(), error.code
    return status, json.loads(text) if text.strip().startswith(("{", "[")) else text


def grpc_translate(server: Any, texts: list[str], **options: Any) -> list[Any]:
    with TranslationClient(server.address) as client:
        return client.translate(texts, **options)


def test_libretranslatepy_translates_lists_languages_and_detects(server: Any, base: str) -> None:
    client = LibreTranslateAPI(base + "/")
    text = "Guten Morgen! Wie spät ist es?"
    sentences = [s for s, _ in split_sentences(text, "de")]
    expected = " ".join(r.text for r in grpc_translate(server, sentences))
    assert client.translate(text, "de", "en") == expected
    assert client.languages() == [{"code": "de", "name": "German", "targets": ["en"]},
                                  {"code": "en", "name": "English", "targets": []}]
    (detected,) = client.detect("Das Haus ist groß und sehr alt.")
    assert detected["language"] == "de" and 50 < detected["confidence"] <= 100


def test_a_list_of_texts_alternatives_and_auto(server: Any, base: str) -> None:
    texts = ["Das Haus ist groß.", "Ich trinke gern Kaffee."]
    status, body = call(base, "/translate", {"q": texts, "source": "auto", "target": "en", "alternatives": 2})
    assert status == 200, body
    with_alternatives = grpc_translate(server, texts, beam_size=4, num_hypotheses=3)
    assert body["translatedText"] == [r.text for r in with_alternatives]
    assert body["alternatives"] == [r.hypotheses[1:] for r in with_alternatives]
    assert [d["language"] for d in body["detectedLanguage"]] == ["de", "de"]


def test_every_sentence_is_translated_as_alone(server: Any, base: str) -> None:
    """A document: its sentences (split with German's rules: "Dr.", "z. B.", "am 15. August") each give what
    they give alone, and the whitespace between them is kept."""
    text = "Dr. Müller kommt am 15. August.\nEr bleibt z. B. drei Tage.  Das ist schön!"
    sentences = split_sentences(text, "de")
    assert [s for s, _ in sentences] == ["Dr. Müller kommt am 15. August.", "Er bleibt z. B. drei Tage.",
                                         "Das ist schön!"]
    alone = [grpc_translate(server, [s])[0].text for s, _ in sentences]
    status, body = call(base, "/translate", {"q": text, "source": "de", "target": "en"})
    assert status == 200, body
    assert body["translatedText"] == f"{alone[0]}\n{alone[1]}  {alone[2]}"


def test_html_keeps_the_markup(base: str, server: Any) -> None:
    document = ('<div class="note" data-x="1"><p>Das Haus ist groß.</p><!-- kept --><p>Ich trinke <b>gern</b> '
                'Kaffee &amp; Tee.</p><script>var s = "nicht übersetzen";</script><br/></div>')
    status, body = call(base, "/translate", {"q": document, "source": "de", "target": "en", "format": "html"})
    assert status == 200, body
    out = body["translatedText"]
    runs = ["Das Haus ist groß.", "Ich trinke", "gern", "Kaffee & Tee."]
    translated = [r.text for r in grpc_translate(server, runs)]
    import html

    expected = (f'<div class="note" data-x="1"><p>{html.escape(translated[0], quote=False)}</p><!-- kept --><p>'
                f'{html.escape(translated[1], quote=False)} <b>{html.escape(translated[2], quote=False)}</b> '
                f'{html.escape(translated[3], quote=False)}</p><script>var s = "nicht übersetzen";</script><br/></div>')
    assert out == expected


def test_json_api_mirrors_grpc(server: Any, base: str) -> None:
    request = {"texts": ["Guten Morgen!", "Das Haus ist groß."], "options": {"beam_size": 2, "num_hypotheses": 2}}
    status, body = call(base, "/v1/translate", request)
    assert status == 200, body
    expected = grpc_translate(server, request["texts"], beam_size=2, num_hypotheses=2)
    assert [r["text"] for r in body["results"]] == [r.text for r in expected]
    assert [[h["text"] for h in r["hypotheses"]] for r in body["results"]] == [r.hypotheses for r in expected]
    status, models = call(base, "/v1/models")
    assert status == 200 and models["models"][0]["source_language"] == "de"


def test_json_stream_sends_partials_then_the_result(base: str, server: Any) -> None:
    body = json.dumps({"texts": ["Das Haus ist groß."], "partial_results": True}).encode()
    request = urllib.request.Request(base + "/v1/translate/stream", method="POST", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        messages = [json.loads(line) for line in response.read().decode().splitlines()]
    final = grpc_translate(server, ["Das Haus ist groß."])[0].text
    partials = [m["partial"].get("text", "") for m in messages if "partial" in m]
    assert partials and all(final.startswith(p) for p in partials)
    assert messages[-1]["result"]["text"] == final


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/translate", {"source": "de", "target": "en"}, 400, "missing q parameter"),
    ("/translate", {"q": 3, "source": "de", "target": "en"}, 400, "q must be a string or a list"),
    ("/translate", {"q": "Hallo", "source": "fr", "target": "en"}, 400, "fr to en is not served"),
    ("/translate", {"q": "Hallo", "source": "auto", "target": "fr"}, 400, "fr is not a target language"),
    ("/translate", {"q": "12345", "source": "auto", "target": "en"}, 400, "cannot detect the language"),
    ("/translate", {"q": "Hallo", "source": "de", "target": "en", "format": "pdf"}, 400, "format must be"),
    ("/translate", {"q": "Hallo", "source": "de", "target": "en", "alternatives": 99}, 400, "alternatives must be"),
    ("/translate", {"q": "Hallo", "source": "de", "target": "en", "alternatives": "x"}, 400, "alternatives must be"),
    ("/translate", {"q": "x" * 20_000, "source": "de", "target": "en"}, 400, "characters"),
    ("/v1/translate", {"texts": ["a"], "options": {"beam_size": 99}}, 400, "options.beam_size"),
    ("/v1/translate", {"texts": "a", "wrong": 1}, 400, "Invalid request"),
    ("/nowhere", {}, 404, "no such endpoint"),
])  # fmt: skip
def test_bad_requests_get_a_clear_4xx(base: str, path: str, body: Any, status: int, message: str) -> None:
    got, answer = call(base, path, body)
    assert got == status and message in answer["error"], (got, answer)


def test_hostile_bodies(base: str, server: Any) -> None:
    assert call(base, "/translate", raw=b"{not json")[0] == 400
    assert call(base, "/translate", raw=b"[1, 2]")[0] == 400
    assert call(base, "/translate", raw=b"\xff\xfe", headers={"content-type": "text/plain"})[0] == 415
    # Over the bound (6 bytes for each of --max-request-chars, and some), declared: refused from the header,
    # before a byte of the body is read.
    limit = body_limit(server.server.config)
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    connection.putrequest("POST", "/translate")
    connection.putheader("content-type", "application/json")
    connection.putheader("content-length", str(limit + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and f"at most {limit}" in json.loads(response.read())["error"]
    connection.close()
    # Sent in chunks with no length: refused once it passes the bound.
    chunks = (b"x" * 65_536 for _ in range(limit // 65_536 + 1))
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)
    connection.request("POST", "/translate", body=chunks, headers={"content-type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "more than" in json.loads(response.read())["error"]
    connection.close()
    # The server is alive and answers the next caller.
    assert call(base, "/translate", {"q": "Hallo", "source": "de", "target": "en"})[0] == 200


def test_api_key_is_checked_when_auth_is_on(helpers: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"web {TOKEN}\n")
    with helpers.running_server(http_config(auth_token_file=str(tokens))) as running:
        base = f"http://127.0.0.1:{running.server.http_port}"
        refused = LibreTranslateAPI(base + "/", api_key="wrong")
        with pytest.raises(urllib.error.HTTPError) as failed:
            refused.translate("Hallo", "de", "en")
        assert failed.value.code == 403
        assert "API key" in json.loads(failed.value.read())["error"]
        assert LibreTranslateAPI(base + "/", api_key=TOKEN).translate("Hallo", "de", "en")
        assert call(base, "/v1/translate", {"texts": ["Hallo"]})[0] == 403
        assert call(base, "/v1/translate", {"texts": ["Hallo"]}, headers={"authorization": f"Bearer {TOKEN}"})[0] == 200


def test_backpressure_is_429(helpers: Any) -> None:
    """A caller over its share of texts in flight (--max-texts-per-caller) gets LibreTranslate's 429."""
    with helpers.running_server(http_config(max_texts_per_caller=2)) as running:
        base = f"http://127.0.0.1:{running.server.http_port}"
        status, answer = call(base, "/translate", {"q": "Eins. Zwei.", "source": "de", "target": "en"})
        assert status == 200, answer
        # Three sentences are three texts in flight at once: over the caller's two.
        status, answer = call(base, "/translate", {"q": "Eins. Zwei. Drei.", "source": "de", "target": "en"})
        assert status == 429, answer
        assert "max-texts-per-caller" in answer["error"] or "caller" in answer["error"], answer


def test_page_and_metrics_are_served(base: str) -> None:
    with urllib.request.urlopen(base + "/", timeout=10) as response:
        page = response.read().decode()
    assert "<title>mtserve</title>" in page and "/static/app.js" in page
    with urllib.request.urlopen(base + "/static/app.js", timeout=10) as response:
        assert b"/v1/translate/stream" in response.read()
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        assert b"mtserve_request_duration_seconds" in response.read()


def test_html_alternatives_keep_the_markup(base: str) -> None:
    document = "<p>Das Haus ist groß.</p><p>Ich trinke <b>gern</b> Kaffee.</p>"
    status, plain = call(base, "/translate", {"q": document, "source": "de", "target": "en", "format": "html"})
    status_alt, body = call(base, "/translate", {"q": document, "source": "de", "target": "en", "format": "html",
                                                 "alternatives": 1})
    assert status == status_alt == 200, (plain, body)
    (alternative,) = body["alternatives"]
    for version in (body["translatedText"], alternative):
        assert version.startswith("<p>") and "</p><p>" in version and "<b>" in version and version.endswith("</p>")
