"""numba set-up shared by the exact kernels: one compile cache, a real float32 FMA, F16 rounding.

Every exact kernel is an `@njit` function (use `qdbg.numerics.kernels.nb.jit`, which sets
`cache=True`, `fastmath=False`, `error_model="numpy"`): fastmath would let LLVM reassociate the
float sums whose order is the whole point. The compile cache lives under the user's cache folder
(`$QDBG_CACHE_DIR/numba`, default `~/.cache/qdbg/numba`), never next to an installed package.

`fma32(a, b, c)` is llvm.fma.f32: one rounding, as the `_mm256_fmadd_ps` lanes and the scalar
FMAs GCC contracts with -ffp-contract=fast compute it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("QDBG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qdbg")
    return Path(base) / "numba"


# must be set before numba is first imported
os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))

import numba  # noqa: E402

if not numba.config.CACHE_DIR:  # numba was imported before us: point it at our cache anyway (read
    numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]  # when each cached kernel is defined)
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.core.extending import intrinsic  # noqa: E402


def jit(*args, **kwargs):
    """numba.njit with the settings every exact kernel needs (cached, no fastmath)."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("fastmath", False)
    kwargs.setdefault("error_model", "numpy")
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)


def ir_args(context, builder, signature, args):
    """Inside an intrinsic's codegen: (ptr, idx), where ptr(k) is the data pointer of array
    argument k and idx(k) integer argument k as an int64."""
    sa = signature.args

    def ptr(k):
        return context.make_array(sa[k])(context, builder, args[k]).data

    def idx(k):
        return context.cast(builder, args[k], sa[k], types.int64)

    return ptr, idx


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 fused multiply-add a*b+c, rounded once (llvm.fma.f32)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]),
                                            "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def f32_to_f16_bits(typingctx, x):
    """IEEE half bits of a float32, round to nearest even (F16C vcvtps2ph with imm 0)."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        h = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(h, ir.IntType(16))

    return sig, codegen


@intrinsic
def f16_bits_to_f32(typingctx, h):
    """float32 value of IEEE half bits (exact)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        v = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(v, ir.FloatType())

    return sig, codegen


@jit(inline="always")
def round_f16(x):
    """x rounded to half and back to float32."""
    return f16_bits_to_f32(f32_to_f16_bits(x))


@jit(inline="always")
def hsum8(v):
    """ggml's fixed horizontal sum of 8 float32 lanes (hsum_float_8 / GGML_F32x8_REDUCE end):
    ((v4+v0)+(v6+v2))+((v5+v1)+(v7+v3)), every add in float32."""
    a = (v[4] + v[0]) + (v[6] + v[2])
    b = (v[5] + v[1]) + (v[7] + v[3])
    return a + b
