"""format: "html": translate the text between the tags and keep the markup as it was.

The document is read with Python's own HTML parser (html.parser): every tag, attribute, comment, doctype
and entity is written back exactly as it came (from the parser's raw text), and each run of text between
two tags is translated on its own, its leading and trailing whitespace kept. Text inside script, style,
code, pre and textarea is not translated. An inline element splits a sentence into runs ("Das ist <b>sehr</b>
gut" gives three), each translated alone: the markup survives, the sentence's flow may not.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser

#: Elements whose text is code or data, not prose.
_VERBATIM = frozenset({"script", "style", "code", "pre", "textarea"})


class _Pieces(HTMLParser):
    """The document as ("markup", raw) and ("text", decoded) pieces, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.pieces: list[tuple[str, str]] = []
        self._verbatim = 0

    def _markup(self) -> None:
        self.pieces.append(("markup", self.get_starttag_text() or ""))

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self._markup()
        if tag in _VERBATIM:
            self._verbatim += 1

    def handle_startendtag(self, tag: str, attrs: object) -> None:
        self._markup()

    def handle_endtag(self, tag: str) -> None:
        self.pieces.append(("markup", f"</{tag}>"))
        if tag in _VERBATIM and self._verbatim:
            self._verbatim -= 1

    def handle_data(self, data: str) -> None:
        self.pieces.append(("markup" if self._verbatim else "text", data))

    def handle_entityref(self, name: str) -> None:
        self.pieces.append(("text", html.unescape(f"&{name};")) if not self._verbatim else ("markup", f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.pieces.append(("text", html.unescape(f"&#{name};")) if not self._verbatim else ("markup", f"&#{name};"))

    def handle_comment(self, data: str) -> None:
        self.pieces.append(("markup", f"<!--{data}-->"))

    def handle_decl(self, decl: str) -> None:
        self.pieces.append(("markup", f"<!{decl}>"))

    def handle_pi(self, data: str) -> None:
        self.pieces.append(("markup", f"<?{data}>"))

    def unknown_decl(self, data: str) -> None:
        self.pieces.append(("markup", f"<![{data}]>"))


def text_runs(document: str) -> list[tuple[str, str]]:
    """The document's pieces with adjacent text (entities included) merged into runs."""
    parser = _Pieces()
    parser.feed(document)
    parser.close()
    merged: list[tuple[str, str]] = []
    for kind, value in parser.pieces:
        if merged and kind == "text" and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + value)
        else:
            merged.append((kind, value))
    return merged


async def translate_html_versions(document: str, translate: Callable[[list[str]], Awaitable[list[list[str]]]],
                                  count: int) -> list[str]:
    """`count` versions of `document`, the k-th with each text run replaced by its k-th translation:
    `translate` takes all runs at once (one batch) and gives each run's versions, best first."""
    runs = text_runs(document)
    wanted = [i for i, (kind, value) in enumerate(runs) if kind == "text" and value.strip()]
    translated = await translate([runs[i][1].strip() for i in wanted]) if wanted else []
    documents = []
    for k in range(count):
        out = [value if kind == "markup" else html.escape(value, quote=False) for kind, value in runs]
        for i, versions in zip(wanted, translated, strict=True):
            value = runs[i][1]
            leading = value[: len(value) - len(value.lstrip())]
            trailing = value[len(value.rstrip()):]
            out[i] = leading + html.escape(versions[k], quote=False) + trailing
        documents.append("".join(out))
    return documents


async def translate_html(document: str, translate: Callable[[list[str]], Awaitable[list[str]]]) -> str:
    """`document` with each text run replaced by its translation (`translate` takes all runs at once, so
    they share one batch)."""

    async def one_version(texts: list[str]) -> list[list[str]]:
        return [[translation] for translation in await translate(texts)]

    return (await translate_html_versions(document, one_version, 1))[0]
