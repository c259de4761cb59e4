"""``mtserve translate`` and ``mtserve models``: command-line clients of a running server."""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

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
    g.add_argument("--source-language", help="checked against the model's source language")
    g.add_argument("--target-language", help="checked against the model's target language")
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


_DECODING = ("model", "source_language", "target_language", "beam_size", "max_length", "length_penalty",
             "num_hypotheses", "return_scores", "sampling_temperature", "sampling_topk", "sampling_topp", "seed",
             "early_stopping")


def decoding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of TranslationClient.translate given on the command line."""
    return {name: getattr(args, name) for name in _DECODING}


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


def _translate_lines(
    client: TranslationClient, lines: Iterable[str], out: IO[str], args: argparse.Namespace, progress: Any
) -> None:
    """Translate in batches of --batch-size lines, --concurrency batches in flight, output in input order."""
    kwargs = decoding_kwargs(args)
    nbest = (args.num_hypotheses or 1) > 1
    number = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        in_flight: collections.deque[tuple[concurrent.futures.Future[list[TranslationResult]], int]] = (
            collections.deque())

        def drain_one() -> None:
            nonlocal number
            future, size = in_flight.popleft()
            for result in future.result():
                out.write("\n".join(_format(result, number, nbest)) + "\n")
                if result.max_length_reached:
                    print(f"mtserve translate: line {number + 1} reached max_length and may be cut short "
                          "(raise --max-length)", file=sys.stderr)
                number += 1
            out.flush()
            if progress is not None:
                progress.update(size)

        try:
            for chunk in _chunks(lines, args.batch_size):
                in_flight.append((pool.submit(client.translate, chunk, **kwargs), len(chunk)))
                if len(in_flight) >= args.concurrency:  # bounded: big inputs are never read all at once
                    drain_one()
            while in_flight:
                drain_one()
        finally:
            for future, _ in in_flight:
                future.cancel()


def translate_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtserve translate",
        description="Translate TEXT arguments, or lines from stdin or -i FILE; one translation per line "
                    "(n-best: 'i ||| text [||| score]' lines; --scores: 'score<TAB>text').")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to translate (default: read lines)")
    parser.add_argument("-i", "--input", metavar="FILE", help="read lines from FILE (with a progress bar)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write translations to FILE (default stdout)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="lines per call (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N",
                        help="calls in flight (%(default)s)")
    add_connection_arguments(parser)
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    if args.texts and args.input:
        parser.error("give TEXT arguments or -i FILE, not both")
    if args.batch_size < 1 or args.concurrency < 1:
        parser.error("--batch-size and --concurrency must be >= 1")

    in_file = open(args.input, encoding="utf-8") if args.input else None  # noqa: SIM115 (closed below)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    progress = None
    try:
        if args.texts:
            lines: Iterable[str] = args.texts
        else:
            source = in_file if in_file is not None else sys.stdin
            lines = (line.rstrip("\r\n") for line in source)
        if in_file is not None:
            from tqdm import tqdm  # only file runs need it

            with open(args.input, encoding="utf-8") as f:
                total = sum(1 for _ in f)
            progress = tqdm(total=total, unit="line", file=sys.stderr, dynamic_ncols=True)
        with TranslationClient(args.server, **connection_kwargs(args)) as client:
            _translate_lines(client, lines, out, args, progress)
    except TranslationError as e:
        print(f"mtserve translate: {e}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.close()
        if in_file is not None:
            in_file.close()
        if out is not sys.stdout:
            out.close()
    return 0


# -- models -------------------------------------------------------------------------------------


def models_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtserve models", description="List the models a server serves.")
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
    header = ("NAME", "PAIR", "LAYERS", "D_MODEL", "HEADS", "VOCAB", "PARAMS", "MAX_LEN", "DEVICE", "DTYPE", "")
    rows = [header]
    for m in models:
        a = m.architecture
        rows.append((
            m.name,
            f"{m.source_language or '?'}-{m.target_language or '?'}",
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
