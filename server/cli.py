"""The ``mtserve`` command: a dispatcher that imports each subcommand only when it runs.

``serve`` and ``train`` need torch; ``translate``, ``models`` and ``bench`` are
client tools that must start fast and work where torch is not installed, so
nothing here imports more than the chosen subcommand needs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module, function, one-line help). The function takes argv (after the subcommand) and
# returns an exit code.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("mtserve.server.cli", "serve_main", "serve translation models over gRPC"),
    "translate": ("mtserve.client.cli", "translate_main", "translate text with a running server"),
    "models": ("mtserve.client.cli", "models_main", "list the models a server serves"),
    "bench": ("mtserve.client.bench", "main", "load-test a server (closed loop, like ghz)"),
    "load": ("mtserve.client.cli", "load_main", "load a model into a running server (serve --admin)"),
    "unload": ("mtserve.client.cli", "unload_main", "unload a model from a running server (serve --admin)"),
    "train": ("mtserve.training.train", "main", "train a model (writes the Marian layout)"),
}


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mtserve")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: mtserve <command> [options]   (mtserve <command> --help for its options; mtserve --version)",
             "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _load(name: str) -> Callable[[list[str]], int] | None:
    module_name, function, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # a dependency of the module is missing: that is a real error
            raise
        return None
    return getattr(module, function, None)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"mtserve {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"mtserve: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    run = _load(name)
    if run is None:
        module_name, function, _ = SUBCOMMANDS[name]
        print(f"mtserve {name}: not available in this installation ({module_name}.{function} is missing)",
              file=sys.stderr)
        return 2
    return int(run(rest) or 0)


# -- serve --------------------------------------------------------------------------------------


def serve_main(argv: Sequence[str]) -> int:
    """``mtserve serve``: parse flags and env into a ServerConfig and hand it to ``mtserve.server.app.serve``."""
    from .config import build_serve_parser, config_from_args

    parser = build_serve_parser()
    args = parser.parse_args(list(argv))
    try:
        config = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))  # exits 2
    from .app import serve

    return serve(config)  # logs the effective configuration at start


if __name__ == "__main__":
    sys.exit(main())
