"""format: "html" (server/http/html.py): on nested, inline and attribute-heavy snippets, every tag, attribute,
comment and entity-free markup piece comes back as it was, and only the text between tags is translated."""

from __future__ import annotations

import asyncio

import pytest

from mtserve.server.http.html import text_runs, translate_html

SNIPPETS = [
    "<p>Das Haus ist groß.</p>",
    '<div class="a b" id="x" data-json=\'{"k": 1}\'><span title="Titel &amp; mehr">Hallo</span> Welt</div>',
    "<ul><li>Eins</li><li>Zwei <em>und <strong>drei</strong></em></li></ul>",
    '<p>Ein <a href="https://example.org/?a=1&amp;b=2" target="_blank">Link</a>, ein Bild <img src="x.png" '
    'alt="Bild"/> und ein Umbruch<br>.</p>',
    "<!DOCTYPE html><html><head><title>Titel</title><style>p { color: red; }</style></head>"
    "<body><!-- Kommentar --><p>Text</p><script>var s = '<b>nein</b>';</script></body></html>",
    "<p>Preis: 3 &lt; 5 &amp; 7 &gt; 2</p><pre>  code bleibt  </pre><code>x = 1</code>",
    "Nur Text ohne Tags.",
    "<table><tr><td>A</td><td> B </td></tr></table>",
]


def marked(texts: list[str]) -> list[str]:
    return [f"[{text}]" for text in texts]


async def translate(texts: list[str]) -> list[str]:
    return marked(texts)


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_markup_is_kept_and_text_translated(snippet: str) -> None:
    out = asyncio.run(translate_html(snippet, translate))
    before, after = text_runs(snippet), text_runs(out)
    assert [v for k, v in before if k == "markup"] == [v for k, v in after if k == "markup"], out
    texts_before = [v for k, v in before if k == "text"]
    texts_after = [v for k, v in after if k == "text"]
    for original, translated in zip(texts_before, texts_after, strict=True):
        if original.strip():
            stripped = original.strip()
            lead = original[: len(original) - len(original.lstrip())]
            trail = original[len(original.rstrip()):]
            assert translated == f"{lead}[{stripped}]{trail}", (original, translated)
        else:
            assert translated == original


def test_script_style_pre_code_are_not_translated() -> None:
    out = asyncio.run(translate_html(SNIPPETS[4] + SNIPPETS[5], translate))
    assert "var s = '<b>nein</b>';" in out and "p { color: red; }" in out
    assert "<pre>  code bleibt  </pre>" in out and "<code>x = 1</code>" in out
    assert "[Text]" in out and "[Titel]" in out


def test_entities_in_text_stay_escaped() -> None:
    out = asyncio.run(translate_html("<p>3 &lt; 5 &amp; 7</p>", translate))
    assert out == "<p>[3 &lt; 5 &amp; 7]</p>"


def test_one_batch_for_all_runs() -> None:
    calls: list[list[str]] = []

    async def counting(texts: list[str]) -> list[str]:
        calls.append(texts)
        return texts

    asyncio.run(translate_html(SNIPPETS[2], counting))
    assert calls == [["Eins", "Zwei", "und", "drei"]]
