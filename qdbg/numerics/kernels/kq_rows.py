"""The float steps of the tiled and repacked K-quant matmuls, 8 tokens at a time (LLVM IR via numba).

For one weight row, every token's output is its own chain of float32 operations over the row's
256-element blocks (kq_matmul's docstring gives the chains); tokens never mix, so 8 of them run
as the 8 lanes of a vector, each lane doing exactly the scalar chain: the same products, the same
FMAs (llvm.fma.v8f32, one rounding each), in block order. Written as IR because numba's loops
over numpy arrays do not vectorize here (the arrays may alias), and these steps took two thirds of
a 14-token matmul as scalar code.

Layouts (ntp = the token count rounded up to 8; padding lanes compute unused values):
  sT    int32 [4*nb, ntp]   sums of scale * code * q per 64 elements, token-minor (kq_simd)
  coef  int32 [nb, 16]      what multiplies the bsums: the mins (Q2_K 16, Q4_K/Q5_K 8 per block)
                            or 32 * the scales (Q6_K's -32 offset); unused for Q3_K
  bt    int32 [nb, 16, ntp] the bsums those multiply (Q4_K/Q5_K: per 32 elements)
  xd, xdm float32 [nb]      the row's block scales d and dmin
  ydT   float32 [nb, ntp]   the activation's block scales
  y     float32 [ntp]       out

kq_tiled_row_<kind>(sT, coef, bt, xd, xdm, ydT, nb, ntp, y), per token and block b:
  s1 = sum of the 4 sums of 64, s2 = sum coef * bt;
  min8/min16 (Q4_K, Q5_K / Q2_K): v = fma(-dmin, f(s2), d * f(s1));  q6: v = d * f(s1 - s2);
  q3: v = d * f(s1);  y = fma(v, yd, y) from 0.
kq_repack_row(sT, coef, bt, xd, xdm, ydT, nb, ntp, n_gemm, y): Q4_K 8x8 repack, dd = d*yd,
  dm = dmin*yd; gemm lanes (token < n_gemm) acc = fma(f(i1), dd, acc), accm = fma(f(i2), dm, accm)
  per 64 elements (i2 = the two sub-blocks' mins * bsums); gemv lanes the same once per block on
  the block's integer totals; y = acc - accm.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from qdbg.numerics.kernels.nb import ir_args

_I32, _I64, _F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_V8I, _V8F = ir.VectorType(_I32, 8), ir.VectorType(_F32, 8)


class _Gen:
    """IR helpers over one intrinsic's arguments."""

    def __init__(self, context, builder, signature, args):
        self.b = builder
        self.ptr, self.idx = ir_args(context, builder, signature, args)
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8F, [_V8F] * 3),
                                                  "llvm.fma.v8f32")

    def c(self, v):
        return ir.Constant(_I64, v)

    def vload(self, p, off, ty):
        return self.b.load(self.b.bitcast(self.b.gep(p, [off]), ty.as_pointer()), align=4)

    def vstore(self, v, p, off):
        self.b.store(v, self.b.bitcast(self.b.gep(p, [off]), v.type.as_pointer()), align=4)

    def splat(self, x, vty):
        v = self.b.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(_V8I, [0] * 8))

    def scalar(self, p, i):
        return self.b.load(self.b.gep(p, [i]))

    def f(self, v):
        return self.b.sitofp(v, _V8F)

    def coef_bt(self, pcoef, pbt, bidx, s, ntp, cpos):
        """splat(coef[b, s]) * bt[b, s, chunk]"""
        k = self.scalar(pcoef, self.b.add(self.b.mul(bidx, self.c(16)), self.c(s)))
        row = self.b.add(self.b.mul(bidx, self.c(16)), self.c(s))
        return self.b.mul(self.splat(k, _V8I), self.vload(pbt, self.b.add(self.b.mul(row, ntp), cpos), _V8I))


def _make_tiled(kind: str):
    n_min = {"min8": 8, "min16": 16, "q6": 16, "q3": 0}[kind]

    @intrinsic
    def kq_tiled_row(typingctx, sT, coef, bt, xd, xdm, ydT, nb, ntp, y):
        sig = types.void(sT, coef, bt, xd, xdm, ydT, nb, ntp, y)

        def codegen(context, builder, signature, args):
            g = _Gen(context, builder, signature, args)
            b = builder
            psT, pcoef, pbt, pxd, pxdm, pyd, py = (g.ptr(k) for k in (0, 1, 2, 3, 4, 5, 8))
            nb, ntp = g.idx(6), g.idx(7)
            acc = cgutils.alloca_once(b, _V8F)
            with cgutils.for_range(b, b.sdiv(ntp, g.c(8))) as chunks:
                cpos = b.mul(chunks.index, g.c(8))
                b.store(ir.Constant(_V8F, [0.0] * 8), acc)
                with cgutils.for_range(b, nb) as blocks:
                    bi = blocks.index
                    s1 = None
                    for k in range(4):
                        row = b.add(b.mul(bi, g.c(4)), g.c(k))
                        v = g.vload(psT, b.add(b.mul(row, ntp), cpos), _V8I)
                        s1 = v if s1 is None else b.add(s1, v)
                    s2 = None
                    for s in range(n_min):
                        v = g.coef_bt(pcoef, pbt, bi, s, ntp, cpos)
                        s2 = v if s2 is None else b.add(s2, v)
                    d = g.splat(g.scalar(pxd, bi), _V8F)
                    if kind == "q6":
                        v = b.fmul(d, g.f(b.sub(s1, s2)))
                    elif kind == "q3":
                        v = b.fmul(d, g.f(s1))
                    else:
                        ndm = g.splat(b.fneg(g.scalar(pxdm, bi)), _V8F)
                        v = b.call(g.fma, [ndm, g.f(s2), b.fmul(d, g.f(s1))])
                    yd = g.vload(pyd, b.add(b.mul(bi, ntp), cpos), _V8F)
                    b.store(b.call(g.fma, [v, yd, b.load(acc)]), acc)
                g.vstore(b.load(acc), py, cpos)
            return context.get_dummy_value()

        return sig, codegen

    return kq_tiled_row


kq_tiled_row_min8 = _make_tiled("min8")
kq_tiled_row_min16 = _make_tiled("min16")
kq_tiled_row_q6 = _make_tiled("q6")
kq_tiled_row_q3 = _make_tiled("q3")


@intrinsic
def kq_repack_row(typingctx, sT, coef, bt, xd, xdm, ydT, nb, ntp, n_gemm, y):
    sig = types.void(sT, coef, bt, xd, xdm, ydT, nb, ntp, n_gemm, y)

    def codegen(context, builder, signature, args):
        g = _Gen(context, builder, signature, args)
        b = builder
        psT, pcoef, pbt, pxd, pxdm, pyd, py = (g.ptr(k) for k in (0, 1, 2, 3, 4, 5, 9))
        nb, ntp, n_gemm = g.idx(6), g.idx(7), g.idx(8)
        zero = ir.Constant(_V8F, [0.0] * 8)
        accs = [cgutils.alloca_once(b, _V8F) for _ in range(4)]  # gemm acc, accm; gemv acc, accm
        lane = ir.Constant(_V8I, list(range(8)))
        with cgutils.for_range(b, b.sdiv(ntp, g.c(8))) as chunks:
            cpos = b.mul(chunks.index, g.c(8))
            for a in accs:
                b.store(zero, a)
            with cgutils.for_range(b, nb) as blocks:
                bi = blocks.index
                yd = g.vload(pyd, b.add(b.mul(bi, ntp), cpos), _V8F)
                dd = b.fmul(g.splat(g.scalar(pxd, bi), _V8F), yd)
                dm = b.fmul(g.splat(g.scalar(pxdm, bi), _V8F), yd)
                t1 = t2 = None
                for j in range(4):
                    row = b.add(b.mul(bi, g.c(4)), g.c(j))
                    i1 = g.vload(psT, b.add(b.mul(row, ntp), cpos), _V8I)
                    i2 = b.add(g.coef_bt(pcoef, pbt, bi, 2 * j, ntp, cpos),
                               g.coef_bt(pcoef, pbt, bi, 2 * j + 1, ntp, cpos))
                    b.store(b.call(g.fma, [g.f(i1), dd, b.load(accs[0])]), accs[0])
                    b.store(b.call(g.fma, [g.f(i2), dm, b.load(accs[1])]), accs[1])
                    t1 = i1 if t1 is None else b.add(t1, i1)
                    t2 = i2 if t2 is None else b.add(t2, i2)
                b.store(b.call(g.fma, [g.f(t1), dd, b.load(accs[2])]), accs[2])
                b.store(b.call(g.fma, [g.f(t2), dm, b.load(accs[3])]), accs[3])
            tok = b.add(g.splat(b.trunc(cpos, _I32), _V8I), lane)
            gemm = b.icmp_signed("<", tok, g.splat(b.trunc(n_gemm, _I32), _V8I))
            ygemm = b.fsub(b.load(accs[0]), b.load(accs[1]))
            ygemv = b.fsub(b.load(accs[2]), b.load(accs[3]))
            g.vstore(b.select(gemm, ygemm, ygemv), py, cpos)
        return context.get_dummy_value()

    return sig, codegen
