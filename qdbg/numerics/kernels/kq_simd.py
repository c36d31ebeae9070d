"""Integer block sums of the K-quant matmuls, several tokens per weight row (LLVM IR through numba).

kq_matmul turns a weight row into w16 = scale * code (int16) and needs, per token, exact int32
sums of w16 * q (q = the token's Q8_K codes, int8) over groups of G consecutive elements:
G = 4 for vec_dot (its AVX2 lanes), 64 for the repacked gemm/gemv, 256 for the tiled kernel.
Integer sums are exact in any order, so this computes them the fast way: 32 elements per step as
int32 products of sign-extended operands, even + odd pairs (the vpmaddwd pattern), adjacent
pairs -> 8 sums of 4; NT tokens share each load of the weight row.

kq_sums_G_NT(w16, q, q_off, q_stride, n, out, out_off, out_stride): for token j < NT,
out[out_off + j*out_stride + g] = sum(w16[G*g : G*g+G] * q[q_off + j*q_stride + G*g : ...]), g < n/G.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic


def _make(G: int, NT: int):
    @intrinsic
    def kq_sums(typingctx, w16, q, q_off, q_stride, n, out, out_off, out_stride):
        sig = types.void(w16, q, q_off, q_stride, n, out, out_off, out_stride)

        def codegen(context, builder, signature, args):
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            v8i, v16i, v32i = ir.VectorType(i32, 8), ir.VectorType(i32, 16), ir.VectorType(i32, 32)
            sa = signature.args

            def ptr(k):
                return context.make_array(sa[k])(context, builder, args[k]).data

            def idx(k):
                return context.cast(builder, args[k], sa[k], types.int64)

            pw, pq, po = ptr(0), ptr(1), ptr(5)
            q_off, q_st, n, o_off, o_st = idx(2), idx(3), idx(4), idx(6), idx(7)
            ev16, od16 = (ir.Constant(v16i, [2 * k + u for k in range(16)]) for u in (0, 1))
            ev8, od8 = (ir.Constant(v8i, [2 * k + u for k in range(8)]) for u in (0, 1))
            q0 = [builder.add(q_off, builder.mul(q_st, ir.Constant(i64, j))) for j in range(NT)]
            o0 = [builder.add(o_off, builder.mul(o_st, ir.Constant(i64, j))) for j in range(NT)]

            red16 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [v16i]),
                                                   "llvm.vector.reduce.add.v16i32")

            def step(e, fold=True):
                """Per token, over elements e..e+31: 8 sums of 4 (fold) or 16 sums of 2."""
                vw = builder.load(builder.bitcast(builder.gep(pw, [e]), ir.VectorType(i16, 32).as_pointer()),
                                  align=2)
                vw = builder.sext(vw, v32i)
                res = []
                for j in range(NT):
                    vq = builder.load(builder.bitcast(builder.gep(pq, [builder.add(q0[j], e)]),
                                                      ir.VectorType(i8, 32).as_pointer()), align=1)
                    p = builder.mul(vw, builder.sext(vq, v32i))
                    pr = builder.add(builder.shuffle_vector(p, p, ev16), builder.shuffle_vector(p, p, od16))
                    res.append(builder.add(builder.shuffle_vector(pr, pr, ev8), builder.shuffle_vector(pr, pr, od8))
                               if fold else pr)
                return res

            n_groups = builder.sdiv(n, ir.Constant(i64, max(G, 32)))
            with cgutils.for_range(builder, n_groups) as loop:
                g = loop.index
                if G == 4:                                      # 8 groups of 4 per 32-element step
                    e = builder.mul(g, ir.Constant(i64, 32))
                    for j, lanes in enumerate(step(e)):
                        dst = builder.gep(po, [builder.add(o0[j], builder.mul(g, ir.Constant(i64, 8)))])
                        builder.store(lanes, builder.bitcast(dst, v8i.as_pointer()), align=4)
                else:
                    acc = None
                    for s in range(G // 32):
                        e = builder.add(builder.mul(g, ir.Constant(i64, G)), ir.Constant(i64, 32 * s))
                        pairs = step(e, fold=False)
                        acc = pairs if acc is None else [builder.add(a, b) for a, b in zip(acc, pairs)]
                    for j in range(NT):
                        builder.store(builder.call(red16, [acc[j]]), builder.gep(po, [builder.add(o0[j], g)]))
            return context.get_dummy_value()

        return sig, codegen

    return kq_sums


kq_sums_4_4, kq_sums_4_1 = _make(4, 4), _make(4, 1)         # vec_dot lanes
# (G = 64 / 256 for the repacked and tiled paths measured slower than their plain int32 dot
# loops, which LLVM already turns into vpmaddwd reductions: _make(64, 4) etc. are not used.)
