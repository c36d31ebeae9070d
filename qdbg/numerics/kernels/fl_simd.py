"""Explicit float32 vector FMA loops for the float MUL_MAT kernels (LLVM IR through numba).

numba runs LLVM's loop vectorizer but not the SLP vectorizer, so an 8-lane accumulator written
as numba scalars stays scalar, and short inner loops drown in runtime checks. These intrinsics
write the loop themselves: `<V x float>` accumulators held in registers, one llvm.fma.vVf32 per
step (lane-wise, so each lane rounds exactly like one `_mm256_fmadd_ps` lane).

dot_lanes_V_NR_NT(a, a_off, a_stride, b, b_off, b_stride, nsteps, out, out_off), arrays 1-D
float32, an NR x NT tile of accumulators (tinyBLAS's RM x RN), each element on its own:
    acc[r][j] = 0;  for s < nsteps:  acc[r][j] = fma(A_r[V*s : +V], B_j[V*s : +V], acc[r][j])
    with A_r = a[a_off + r*a_stride:], B_j = b[b_off + j*b_stride:];  out[out_off + (r*NT + j)*V : +V]
V = 8 is tinyBLAS's __m256 accumulator; V = 32 is ggml_vec_dot's 4 x __m256 (lane p % 32).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from qdbg.numerics.kernels.nb import ir_args


def _make(V: int, NR: int, NT: int):
    @intrinsic
    def dot_lanes(typingctx, a, a_off, a_stride, b, b_off, b_stride, nsteps, out, out_off):
        sig = types.void(a, a_off, a_stride, b, b_off, b_stride, nsteps, out, out_off)

        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            vt = ir.VectorType(f32, V)
            i64 = ir.IntType(64)
            ptr, idx = ir_args(context, builder, signature, args)

            pa, pb, po = ptr(0), ptr(3), ptr(7)
            a_off, a_stride, b_off, b_stride = idx(1), idx(2), idx(4), idx(5)
            nsteps, out_off = idx(6), idx(8)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{V}f32")
            zero = ir.Constant(vt, [0.0] * V)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(NR * NT)]
            aoffs = [builder.add(a_off, builder.mul(a_stride, ir.Constant(i64, r))) for r in range(NR)]
            boffs = [builder.add(b_off, builder.mul(b_stride, ir.Constant(i64, j))) for j in range(NT)]

            def vload(p, off):
                return builder.load(builder.bitcast(builder.gep(p, [off]), vt.as_pointer()), align=4)

            with cgutils.for_range(builder, nsteps) as loop:
                off = builder.mul(loop.index, ir.Constant(i64, V))
                vas = [vload(pa, builder.add(aoffs[r], off)) for r in range(NR)]
                vbs = [vload(pb, builder.add(boffs[j], off)) for j in range(NT)]
                for r in range(NR):
                    for j in range(NT):
                        acc = accs[r * NT + j]
                        builder.store(builder.call(fma, [vas[r], vbs[j], builder.load(acc)]), acc)
            for j in range(NR * NT):
                o = builder.add(out_off, ir.Constant(i64, j * V))
                p = builder.bitcast(builder.gep(po, [o]), vt.as_pointer())
                builder.store(builder.load(accs[j]), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return dot_lanes


dot_lanes_8_4x3 = _make(8, 4, 3)    # tinyBLAS, 4 weight rows x 3 tokens
dot_lanes_8_4x1 = _make(8, 4, 1)
dot_lanes_8_1x1 = _make(8, 1, 1)
dot_lanes_32_1x4 = _make(32, 1, 4)  # vec_dot, 1 weight row x 4 tokens
dot_lanes_32_1x1 = _make(32, 1, 1)
