"""Integer block sums of the K-quant matmuls, several tokens per weight row (LLVM IR through numba).

kq_madd_* (below) is what the K-quant matmuls use for every type but Q3_K; kq_sums_* serve Q3_K's
signed codes.

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

from qdbg.numerics.kernels.nb import ir_args


def _make(G: int, NT: int):
    @intrinsic
    def kq_sums(typingctx, w16, q, q_off, q_stride, n, out, out_off, out_stride):
        sig = types.void(w16, q, q_off, q_stride, n, out, out_off, out_stride)

        def codegen(context, builder, signature, args):
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            v8i, v16i, v32i = ir.VectorType(i32, 8), ir.VectorType(i32, 16), ir.VectorType(i32, 32)

            ptr, idx = ir_args(context, builder, signature, args)

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


kq_sums_4_4, kq_sums_4_1 = _make(4, 4), _make(4, 1)         # vec_dot lanes, Q3_K (signed codes)
# (G = 64 / 256 for the repacked and tiled paths measured slower than their plain int32 dot
# loops, which LLVM already turns into vpmaddwd reductions: _make(64, 4) etc. are not used.)


def native_avx2() -> bool:
    """Whether numba compiles for this CPU and it has AVX2 (so the x86 byte-madd intrinsics can be
    emitted); otherwise the madd kernels are written in portable IR with the same integers."""
    import numba
    from llvmlite import binding as llb

    if numba.config.CPU_NAME not in (None, "host") or numba.config.CPU_FEATURES:
        return False
    try:
        return bool(llb.get_host_cpu_features().get("avx2", False))
    except Exception:  # noqa: BLE001 (no feature map: take the portable IR)
        return False


def madd_builder(builder, native: bool):
    """madd(vc, vq, vs) -> <8 x i32>: u8 codes vc <32 x i8> times s8 q vq <32 x i8>, adjacent pairs
    added (vpmaddubsw), times the pair scales vs <16 x i16>, adjacent pairs added (vpmaddwd).
    `native`: the AVX2 intrinsics; else portable IR giving the same integers (no pair sum
    saturates: |code| <= 63)."""
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    v32b, v16w, v8d = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
    mod = builder.module
    if native:
        maddubs = cgutils.get_or_insert_function(mod, ir.FunctionType(v16w, [v32b, v32b]),
                                                 "llvm.x86.avx2.pmadd.ub.sw")
        maddwd = cgutils.get_or_insert_function(mod, ir.FunctionType(v8d, [v16w, v16w]),
                                                "llvm.x86.avx2.pmadd.wd")

        def madd(vc, vq, vs):
            return builder.call(maddwd, [builder.call(maddubs, [vc, vq]), vs])
        return madd
    v32w, v16d = ir.VectorType(i16, 32), ir.VectorType(i32, 16)
    ev = [ir.Constant(ir.VectorType(i32, m), [2 * k for k in range(m)]) for m in (16, 8)]
    od = [ir.Constant(ir.VectorType(i32, m), [2 * k + 1 for k in range(m)]) for m in (16, 8)]

    def madd(vc, vq, vs):
        p = builder.mul(builder.zext(vc, v32w), builder.sext(vq, v32w))
        pr = builder.add(builder.shuffle_vector(p, p, ev[0]), builder.shuffle_vector(p, p, od[0]))
        p2 = builder.mul(builder.sext(pr, v16d), builder.sext(vs, v16d))
        return builder.add(builder.shuffle_vector(p2, p2, ev[1]), builder.shuffle_vector(p2, p2, od[1]))
    return madd


def _make_madd(G: int, NT: int, native: bool | None = None):
    """Scaled sums from the codes, the C kernels' way: per 32 elements, u8 code x s8 q pair sums
    (vpmaddubsw: |pair| <= 2*63*128 < 2^15, so it never saturates) times the pair's sub-block
    scale, adjacent pairs added (vpmaddwd) -> 8 int32 sums of 4 elements.

    kq_madd_G_NT(codes, sc, q, q_off, q_stride, n, out, out_off, out_stride, g_stride): codes
    uint8 [n] (0..63: Q2_K, Q4_K, Q5_K, Q6_K), sc int32 [n/16] (each 16 elements' scale, |sc| < 2^15;
    the vector of pair scales is made in registers from two of them per 32 elements);
    for token j < NT, G = 64: out[out_off + j*out_stride + g*g_stride] = sum(sc * code * q) over
    elements 64g .. 64g+63 of q[q_off + j*q_stride:]; G = 4: the 8 lanes of each 32 elements
    (sums of 4) stored as they are at out[out_off + j*out_stride + g*g_stride], g_stride >= 8.
    Same integers as w16 = scale * code dotted with q: exact in any order.
    """
    use_native = native_avx2() if native is None else native

    @intrinsic
    def kq_madd(typingctx, codes, sc, q, q_off, q_stride, n, out, out_off, out_stride, g_stride):
        sig = types.void(codes, sc, q, q_off, q_stride, n, out, out_off, out_stride, g_stride)

        def codegen(context, builder, signature, args):
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            v32b, v8d = ir.VectorType(i8, 32), ir.VectorType(i32, 8)
            ptr, idx = ir_args(context, builder, signature, args)

            def c64(v):
                return ir.Constant(i64, v)

            pc, ps, pq, po = ptr(0), ptr(1), ptr(2), ptr(6)
            q_off, q_st, n, o_off, o_st, g_st = idx(3), idx(4), idx(5), idx(7), idx(8), idx(9)
            q0 = [builder.add(q_off, builder.mul(q_st, c64(j))) for j in range(NT)]
            o0 = [builder.add(o_off, builder.mul(o_st, c64(j))) for j in range(NT)]
            mod = builder.module
            madd = madd_builder(builder, use_native)
            red8 = cgutils.get_or_insert_function(mod, ir.FunctionType(i32, [v8d]), "llvm.vector.reduce.add.v8i32")

            def load(p, off, ty, align):
                return builder.load(builder.bitcast(builder.gep(p, [off]), ty.as_pointer()), align=align)

            v2d, v2w = ir.VectorType(i32, 2), ir.VectorType(i16, 2)
            spread = ir.Constant(ir.VectorType(i32, 16), [0] * 8 + [1] * 8)

            def step(e):
                vc = load(pc, e, v32b, 1)
                two = builder.trunc(load(ps, builder.sdiv(e, c64(16)), v2d, 4), v2w)   # 2 sub-blocks
                vs = builder.shuffle_vector(two, two, spread)
                return [madd(vc, load(pq, builder.add(q0[j], e), v32b, 1), vs) for j in range(NT)]

            n_groups = builder.sdiv(n, c64(max(G, 32)))
            with cgutils.for_range(builder, n_groups) as loop:
                g = loop.index
                if G == 4:
                    lanes = step(builder.mul(g, c64(32)))
                    for j in range(NT):
                        dst = builder.gep(po, [builder.add(o0[j], builder.mul(g, g_st))])
                        builder.store(lanes[j], builder.bitcast(dst, v8d.as_pointer()), align=4)
                else:
                    acc = None
                    for s in range(G // 32):
                        part = step(builder.add(builder.mul(g, c64(G)), c64(32 * s)))
                        acc = part if acc is None else [builder.add(a, b) for a, b in zip(acc, part)]
                    for j in range(NT):
                        builder.store(builder.call(red8, [acc[j]]),
                                      builder.gep(po, [builder.add(o0[j], builder.mul(g, g_st))]))
            return context.get_dummy_value()

        return sig, codegen

    return kq_madd


kq_madd_4_4, kq_madd_4_1 = _make_madd(4, 4), _make_madd(4, 1)        # vec_dot lanes
kq_madd_64_8, kq_madd_64_4 = _make_madd(64, 8), _make_madd(64, 4)    # repack gemm/gemv, tiled
kq_madd_64_2, kq_madd_64_1 = _make_madd(64, 2), _make_madd(64, 1)
