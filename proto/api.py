"""The generated protobuf and gRPC modules for ``mtserve/v1/translation.proto``.

    from mtserve.proto.api import pb2, pb2_grpc

The code is generated from the .proto at import time with
``grpc.protos_and_services`` (grpcio-tools' protoc, in process), so it can
never drift from the .proto and needs no build step, installed or editable.

``grpc.protos_and_services(path)`` maps ``mtserve/v1/translation.proto`` to
the module names ``mtserve.v1.translation_pb2`` / ``..._pb2_grpc`` and finds
the file (and its imports) by searching ``sys.path`` entries. The .proto is
package data of ``mtserve.proto``, so this package's folder is the include
root; it is on ``sys.path`` only while the modules are generated. What stays
behind is what any import leaves: the two modules and their parent namespace
``mtserve.v1`` in ``sys.modules``, the file in protobuf's default descriptor
pool (which server reflection serves from), and grpcio-tools' own import hook.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc

#: The include root: the folder of this package, holding ``mtserve/v1/*.proto``.
PROTO_ROOT = Path(__file__).resolve().parent
#: The .proto's name relative to PROTO_ROOT, as protoc and the descriptor pool know it.
PROTO_FILE = "mtserve/v1/translation.proto"
#: Fully qualified service name (for health checks, reflection and metrics).
SERVICE_NAME = "mtserve.v1.TranslationService"
ADMIN_SERVICE_NAME = "mtserve.v1.Admin"

_path_lock = threading.Lock()


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """Put ``folder`` first on ``sys.path`` for the duration, unless it is already there."""
    entry = str(folder)
    with _path_lock:
        added = entry not in sys.path
        if added:
            sys.path.insert(0, entry)
        try:
            yield
        finally:
            if added:
                with contextlib.suppress(ValueError):
                    sys.path.remove(entry)


def _generate() -> tuple[ModuleType, ModuleType]:
    if not (PROTO_ROOT / PROTO_FILE).is_file():
        raise ImportError(f"{PROTO_FILE} not found under {PROTO_ROOT}: the package is installed incompletely")
    with _on_sys_path(PROTO_ROOT):
        return grpc.protos_and_services(PROTO_FILE)


pb2, pb2_grpc = _generate()

__all__ = ["ADMIN_SERVICE_NAME", "PROTO_FILE", "PROTO_ROOT", "SERVICE_NAME", "pb2", "pb2_grpc"]
