"""``mtserve translate`` and ``mtserve models``: command-line clients of a running server."""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import itertools
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import grpc

from ._common import PRIORITIES
from .argparsing import ArgumentParser
from .client import TranslationClient
from .types import TranslationError, TranslationResult

DEFAULT_SERVER = "localhost:50051"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("MTSERVE_SERVER", DEFAULT_SERVER),
                        help="HOST:PORT, a gRPC target, or several HOST:PORT comma-separated "
                             "(round_robin) [env MTSERVE_SERVER; default %(default)s]")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="deadline of each call in seconds (default %(default)s)")
    g = parser.add_argument_group("security")
    g.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    g.add_argument("--ca", metavar="FILE", help="TLS, trusting this CA certificate (PEM)")
    g.add_argument("--cert", metavar="FILE", help="the client's certificate (PEM), for mutual TLS")
    g.add_argument("--key", metavar="FILE", help="the client's private key (PEM), for mutual TLS")
    g.add_argument("--token-file", metavar="FILE",
                   help="a file holding the bearer token [env MTSERVE_TOKEN holds the token itself]")


def connection_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """TranslationClient / AsyncTranslationClient keywords from add_connection_arguments' flags."""
    token = os.environ.get("MTSERVE_TOKEN") or None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    return {"timeout": args.timeout, "tls": args.tls, "root_certificates": args.ca, "certificate_chain": args.cert,
            "private_key": args.key, "token": token}


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The request options; unset ones take the server's defaults."""
    g = parser.add_argument_group("decoding (unset: the server's defaults)")
    g.add_argument("--model", help="model name (default: the server's default model)")
    g.add_argument("--source-language", metavar="LANG",
                   help="language of the texts (en, eng_Latn, ...): needed by multilingual models, checked otherwise")
    g.add_argument("--target-language", metavar="LANG",
                   help="language to translate into (de, deu_Latn, zh-TW, ...): as --source-language")
    g.add_argument("--beam-size", type=int, metavar="N")
    g.add_argument("--max-length", type=int, metavar="N", help="most tokens to generate per text")
    g.add_argument("--length-penalty", type=float, metavar="X")
    g.add_argument("--num-hypotheses", type=int, metavar="N", help="n-best size")
    g.add_argument("--scores", dest="return_scores", action="store_true", help="return hypothesis scores")
    g.add_argument("--sampling-temperature", type=float, metavar="T")
    g.add_argument("--sampling-topk", type=int, metavar="K")
    g.add_argument("--sampling-topp", type=float, metavar="P")
    g.add_argument("--seed", type=int)
    g.add_argument("--early-stopping", action="store_true", default=None,
                   help="beam search stops once beam-size hypotheses have finished")
    g.add_argument("--target-prefix", metavar="TEXT",
                   help="every translation starts with TEXT and goes on from there")
    g.add_argument("--priority", choices=PRIORITIES,
                   help="admission class: interactive calls go before normal ones, batch ones after (never starved)")
    g.add_argument("--term", dest="terminology", action="append", type=_term, metavar="SOURCE=TARGET",
                   help="a glossary entry: where SOURCE occurs, the translation says TARGET (repeat; beam search)")
    g.add_argument("--replace-unknowns", action="store_true",
                   help="each <unk> of a translation becomes the source piece it is aligned to")
    g.add_argument("--no-split-sentences", dest="split_sentences", action="store_false", default=None,
                   help="translate each text whole, not sentence by sentence")


_DECODING = ("model", "source_language", "target_language", "beam_size", "max_length", "length_penalty",
             "num_hypotheses", "return_scores", "sampling_temperature", "sampling_topk", "sampling_topp", "seed",
             "early_stopping", "split_sentences", "priority", "target_prefix", "replace_unknowns")


def _term(value: str) -> tuple[str, str]:
    source, sep, target = value.partition("=")
    if not sep or not source.strip() or not target.strip():
        raise argparse.ArgumentTypeError(f"expected SOURCE=TARGET, got {value!r}")
    return source.strip(), target.strip()


def decoding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of TranslationClient.translate given on the command line."""
    kwargs = {name: getattr(args, name) for name in _DECODING}
    kwargs["terminology"] = dict(args.terminology) if getattr(args, "terminology", None) else None
    return kwargs


# -- translate ----------------------------------------------------------------------------------


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _format(result: TranslationResult, index: int, nbest: bool) -> list[str]:
    """One line per translation: ``text``, ``score<TAB>text`` with scores, Moses n-best with n > 1."""
    if nbest:
        return [f"{index} ||| {text}" + (f" ||| {result.scores[k]:.6f}" if result.scores else "")
                for k, text in enumerate(result.hypotheses)]
    if result.score is not None:
        return [f"{result.score:.6f}\t{result.text}"]
    return [result.text]


@dataclass
class _LineError:
    """A line the server refused; its output is empty (skip), a marker (mark), or the end (fail)."""

    reason: str


_TEXT_FIELD = re.compile(r"^texts\[(\d+)\]: (.*)$", re.DOTALL)


def _translate_chunk(client: TranslationClient, lines: list[str], kwargs: dict[str, Any]
                     ) -> list[TranslationResult | _LineError]:
    """Translate one call's lines; a line the server refuses (INVALID_ARGUMENT naming texts[i]) becomes a
    _LineError and the rest is sent again, so one bad line never costs its neighbours."""
    results: list[TranslationResult | _LineError | None] = [None] * len(lines)
    pending = list(range(len(lines)))
    while pending:
        try:
            done = client.translate([lines[i] for i in pending], **kwargs)
        except TranslationError as error:
            if error.code != grpc.StatusCode.INVALID_ARGUMENT or not error.details.startswith("texts"):
                raise  # about the call (its model, its options, the server): every line would fail alike
            match = _TEXT_FIELD.match(error.details)
            if match is not None and int(match.group(1)) < len(pending):
                results[pending.pop(int(match.group(1)))] = _LineError(match.group(2))
            elif len(pending) > 1:  # about the call as a whole (its size): one line at a time
                for index in pending:
                    results[index] = _translate_chunk(client, [lines[index]], kwargs)[0]
                return results  # type: ignore[return-value]
            else:
                results[pending.pop()] = _LineError(error.details)
            continue
        for index, result in zip(pending, done, strict=True):
            results[index] = result
        pending = []
    return results  # type: ignore[return-value]


@dataclass
class _Progress:
    written: int = 0  # lines whose output is written
    failed: int = 0  # of them, lines the server refused


def _translate_lines(client: TranslationClient, lines: Iterable[str], out: IO[str], args: argparse.Namespace,
                     progress: Any, done: _Progress) -> None:
    """Translate in batches of --batch-size lines, --concurrency batches in flight, output in input order,
    each batch's lines written whole."""
    kwargs = decoding_kwargs(args)
    nbest = (args.num_hypotheses or 1) > 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        in_flight: collections.deque[concurrent.futures.Future[list[TranslationResult | _LineError]]] = (
            collections.deque())

        def drain_one() -> None:
            text: list[str] = []
            for result in in_flight.popleft().result():
                number = done.written + len(text) + 1
                if isinstance(result, _LineError):
                    if args.on_error == "fail":
                        out.write("".join(text))
                        out.flush()
                        done.written += len(text)
                        raise _Refused(number, result.reason)
                    done.failed += 1
                    print(f"mtserve translate: {_where(args, number)}: {result.reason}", file=sys.stderr)
                    text.append(("" if args.on_error == "skip" else args.marker) + "\n")
                    continue
                text.append("\n".join(_format(result, number - 1, nbest)) + "\n")
                if result.max_length_reached:
                    print(f"mtserve translate: {_where(args, number)} reached max_length and may be cut short "
                          "(raise --max-length)", file=sys.stderr)
            out.write("".join(text))  # whole lines only, so an interrupted run leaves no half line
            out.flush()
            done.written += len(text)
            if progress is not None:
                progress.update(len(text))

        try:
            for chunk in _chunks(lines, args.batch_size):
                in_flight.append(pool.submit(_translate_chunk, client, chunk, kwargs))
                if len(in_flight) >= args.concurrency:  # bounded: big inputs are never read all at once
                    drain_one()
            while in_flight:
                drain_one()
        finally:
            for future in in_flight:
                future.cancel()


class _Refused(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(line, reason)
        self.line, self.reason = line, reason


def _languages(model: Any) -> str:
    """A declared pair as en-de; a multilingual model by its number of languages."""
    if model.languages and not (model.source_language and model.target_language):
        return f"{len(model.languages)} languages"
    return f"{model.source_language or '?'}-{model.target_language or '?'}"


def _where(args: argparse.Namespace, number: int) -> str:
    return f"{args.input}:{number}" if args.input else f"line {number}"


def translate_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="mtserve translate",
        description="Translate TEXT arguments, or lines from stdin or -i FILE; one translation per line, in "
                    "order, empty lines kept (n-best: 'i ||| text [||| score]' lines; --scores: "
                    "'score<TAB>text').")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to translate (default: read lines)")
    parser.add_argument("-i", "--input", metavar="FILE", help="read lines from FILE (with a progress bar)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write translations to FILE (default stdout)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="lines per call (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N",
                        help="calls in flight (%(default)s)")
    parser.add_argument("--stream", action="store_true",
                        help="translate each line as soon as it is read and print it as soon as it is done "
                             "(for a terminal or a pipe; --batch-size 1 --concurrency 1)")
    parser.add_argument("--on-error", choices=("fail", "skip", "mark"), default="fail",
                        help="a line the server refuses (too long, ...): stop there (fail, the default), leave "
                             "its output line empty (skip), or write --marker (mark); skip and mark count them")
    parser.add_argument("--marker", default="[untranslated]", metavar="TEXT",
                        help="the output line of a refused line with --on-error mark (%(default)s)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the server to report SERVING (a server just "
                             "started is still loading its models)")
    add_connection_arguments(parser)
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    if args.texts and args.input:
        parser.error("give TEXT arguments or -i FILE, not both")
    if args.stream:
        args.batch_size = args.concurrency = 1
    if args.batch_size < 1 or args.concurrency < 1:
        parser.error("--batch-size and --concurrency must be >= 1")
    try:
        in_file = open(args.input, encoding="utf-8") if args.input else None  # noqa: SIM115 (closed below)
    except OSError as e:
        parser.error(f"-i {args.input}: {e.strerror}")
    try:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    except OSError as e:
        parser.error(f"-o {args.output}: {e.strerror}")
    progress = None
    done = _Progress()
    total: int | None = len(args.texts) if args.texts else None
    try:
        if args.texts:
            lines: Iterable[str] = args.texts
        else:
            source = in_file if in_file is not None else sys.stdin
            lines = (line.rstrip("\r\n") for line in source)
        if in_file is not None:
            with open(args.input, encoding="utf-8") as f:
                total = sum(1 for _ in f)
            if not args.stream:
                from tqdm import tqdm  # only file runs need it

                progress = tqdm(total=total, unit="line", file=sys.stderr, dynamic_ncols=True)
        with TranslationClient(args.server, **connection_kwargs(args)) as client:
            if args.wait > 0:
                client.wait_until_serving(args.wait)
            _translate_lines(client, lines, out, args, progress, done)
    except _Refused as refused:
        print(f"mtserve translate: {_where(args, refused.line)}: {refused.reason}\n"
              f"stopped there (--on-error skip or mark goes on); {_output_note(args, done, total)}",
              file=sys.stderr)
        return 1
    except TranslationError as e:
        print(f"mtserve translate: {e}", file=sys.stderr)
        if done.written:
            print(f"mtserve translate: interrupted; {_output_note(args, done, total)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nmtserve translate: interrupted; {_output_note(args, done, total)}", file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
        if in_file is not None:
            in_file.close()
        if out is not sys.stdout:
            out.close()
    if done.failed:
        print(f"mtserve translate: {done.failed} of {done.written} lines were refused "
              f"({'left empty' if args.on_error == 'skip' else f'written as {args.marker}'})", file=sys.stderr)
    return 0


def _output_note(args: argparse.Namespace, done: _Progress, total: int | None) -> str:
    of = f" of {total}" if total is not None else ""
    where = f"is in {args.output}" if args.output else "was printed"
    return f"{done.written}{of} lines translated; the output so far {where}, complete lines only"


# -- models -------------------------------------------------------------------------------------


def load_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="mtserve load", description="Load a model into a server started with --admin.")
    parser.add_argument("name", help="the name requests will use")
    parser.add_argument("path", help="the model directory, on the server's machine")
    parser.add_argument("--default", action="store_true", help="requests that name no model go to it from now on")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with TranslationClient(args.server, **connection_kwargs(args)) as client:
            model = client.load_model(args.name, args.path, make_default=args.default)
    except TranslationError as e:
        print(f"mtserve load: {e}", file=sys.stderr)
        return 1
    print(f"loaded {model.name} ({model.architecture.parameter_count / 1e6:.1f}M parameters, {model.device}, "
          f"{model.dtype}){' as the default' if model.is_default else ''}")
    return 0


def unload_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="mtserve unload", description="Unload a model from a server started with --admin.")
    parser.add_argument("name")
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        with TranslationClient(args.server, **connection_kwargs(args)) as client:
            drained = client.unload_model(args.name)
    except TranslationError as e:
        print(f"mtserve unload: {e}", file=sys.stderr)
        return 1
    print(f"unloaded {args.name} ({drained} call(s) were still running and finished)")
    return 0


def models_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="mtserve models", description="List the models a server serves.")
    add_connection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        with TranslationClient(args.server, **connection_kwargs(args)) as client:
            models = client.list_models()
    except TranslationError as e:
        print(f"mtserve models: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
        return 0
    header = ("NAME", "LANGUAGES", "LAYERS", "D_MODEL", "HEADS", "VOCAB", "PARAMS", "MAX_LEN", "DEVICE", "DTYPE", "")
    rows = [header]
    for m in models:
        a = m.architecture
        rows.append((
            m.name,
            _languages(m),
            f"{a.encoder_layers}+{a.decoder_layers}",
            str(a.d_model),
            str(a.encoder_attention_heads),
            f"{a.source_vocab_size}/{a.target_vocab_size}",
            f"{a.parameter_count / 1e6:.1f}M",
            f"{m.max_source_length}/{m.max_target_length}",
            m.device,
            m.dtype,
            "(default)" if m.is_default else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
