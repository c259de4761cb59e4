"""MKL's packed single-precision GEMM, from the MKL that torch's CPU library carries.

``cblas_sgemm_pack`` reorders a weight once into the panels MKL's kernel reads; ``cblas_sgemm_compute``
multiplies by it at any row count. This is what CTranslate2 runs on Intel CPUs ("SGEMM backend: MKL
(packed: true)"). torch exposes it only as ``torch.ops.mkl._mkl_linear``, which falls back to an unpacked
matmul unless the input has exactly the row count the weight was packed for; MKL itself has no such
limit (CTranslate2 packs with m = 1 and computes at any m), so the functions are called here directly
through ctypes. They are exported by ``libtorch_cpu`` on x86-64 Linux builds; where they are not (other
platforms, a build without MKL) :func:`available` is False and callers use another kernel.

The packed layout depends on the row count given when packing. Measured with the weights out of cache
(30 distinct weights, one thread, Intel Xeon, the bundled model's shapes), packing for 64 rows served
every row count from 8 to 128 as well as or better than packing for the exact count, and 256 x 8000 at
32 rows took 1.54 ms against 1.98 ms packed for 1 row (CTranslate2's choice).
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache

import torch

log = logging.getLogger(__name__)

# CBLAS enumerations (mkl_cblas.h).
_ROW_MAJOR, _NO_TRANS, _TRANS, _B_MATRIX, _PACKED = 101, 111, 112, 162, 151
#: The row count weights are packed for (see the module docstring).
PACK_ROWS = 64


@cache
def _library() -> ctypes.CDLL | None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)
        size, pack, compute = lib.cblas_sgemm_pack_get_size, lib.cblas_sgemm_pack, lib.cblas_sgemm_compute
    except (OSError, AttributeError):
        return None
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p  # MKL's LP64 interface: 32-bit integers
    size.restype, size.argtypes = ctypes.c_size_t, [i, i, i, i]
    pack.restype, pack.argtypes = None, [i, i, i, i, i, i, f, p, i, p]
    compute.restype, compute.argtypes = None, [i, i, i, i, i, i, p, i, p, i, f, p, i]
    return lib


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, in) float32 packed for :func:`linear`: an opaque byte buffer. MKL sizes the buffer
    generously; only what it writes becomes resident (about the weight's own size)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("MKL's packed GEMM is not available in this torch build")
    weight = weight.detach().contiguous().float().cpu()
    out_features, in_features = weight.shape
    buffer = torch.empty(lib.cblas_sgemm_pack_get_size(_B_MATRIX, PACK_ROWS, out_features, in_features),
                         dtype=torch.uint8)
    lib.cblas_sgemm_pack(_ROW_MAJOR, _B_MATRIX, _TRANS, PACK_ROWS, out_features, in_features, 1.0,
                         weight.data_ptr(), in_features, buffer.data_ptr())
    return buffer


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (M, in) float32, with the weight as :func:`pack` left it."""
    lib = _library()
    assert lib is not None
    x = x.contiguous()
    rows, in_features = x.shape
    out = torch.empty(rows, out_features, dtype=torch.float32)
    if rows == 0:
        return out
    if bias is not None:
        out.copy_(bias.expand(rows, out_features))
    lib.cblas_sgemm_compute(_ROW_MAJOR, _NO_TRANS, _PACKED, rows, out_features, in_features, x.data_ptr(),
                            in_features, packed.data_ptr(), in_features, 1.0 if bias is not None else 0.0,
                            out.data_ptr(), out_features)
    return out


@cache
def available() -> bool:
    """The functions are there and compute what they should (checked once against torch's matmul)."""
    if _library() is None:
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight, bias = torch.randn(24, 40, generator=generator), torch.randn(24, generator=generator)
        x = torch.randn(5, 40, generator=generator)
        ok = torch.allclose(linear(x, pack(weight), bias, 24), torch.addmm(bias, x, weight.T), atol=1e-4)
    except Exception as exc:  # a build whose MKL symbols behave otherwise: never used
        log.warning("MKL's packed GEMM failed its self-check (%s); not used", exc)
        return False
    if not ok:
        log.warning("MKL's packed GEMM failed its self-check (wrong results); not used")
    return ok
