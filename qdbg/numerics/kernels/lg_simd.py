"""Vector loops of the legacy-quant dot product (LLVM IR through numba), per weight row x token.

numba's loop vectorizer does not turn 8 scalar float accumulators into one `<8 x float>`, so the
AVX2 order (8 lanes, one FMA per lane per block) costs 8 scalar FMAs and a store per block. This
intrinsic writes one block step as ggml_vec_dot_q8_0_q8_0 / tinyBLAS_Q0_AVX do it:

    per 32-element block b:  p = int32 products of w[32b:+32] and a[32b:+32] (int16 inputs)
                             L[k] = p[4k] + p[4k+1] + p[4k+2] + p[4k+3]       (exact, k < 8)
    lanes (repacked 0):      acc = fma(splat(dw[b] * ad[b]), f32(L), acc)      (<8 x float>)
                             result ((v4+v0)+(v6+v2))+((v5+v1)+(v7+v3))
    one accumulator (1):     r = fma(f32(sum L), dw[b] * ad[b], r)              (repack gemm/gemv)

lg_dot_NT(w, w_off, a, a_off, a_stride, dw, dw_off, ad, ad_off, ad_stride, nb, one_acc, out, out_off):
NT tokens (a rows a_off + j*a_stride, scales ad_off + j*ad_stride) against one weight row, results
to out[out_off + j]; w, a int16 1-D, dw, ad, out float32 1-D. NT independent accumulator chains
hide the FMA latency (the C kernels' tiles do the same: each output keeps its own accumulator). Every float step rounds like its C counterpart: the products dw*ad are f32
multiplies, each FMA rounds once per lane, the horizontal sum is hsum_float_8's order.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from qdbg.numerics.kernels.nb import ir_args


def _make(NT: int):
    @intrinsic
    def lg_dot(typingctx, w, w_off, a, a_off, a_stride, dw, dw_off, ad, ad_off, ad_stride, nb, one_acc,
               out, out_off):
        sig = types.void(w, w_off, a, a_off, a_stride, dw, dw_off, ad, ad_off, ad_stride, nb, one_acc,
                         out, out_off)

        def codegen(context, builder, signature, args):
            f32, i32, i16, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(16), ir.IntType(64)
            v8f, v8i = ir.VectorType(f32, 8), ir.VectorType(i32, 8)
            v32s, v32i = ir.VectorType(i16, 32), ir.VectorType(i32, 32)
            sa = signature.args

            ptr, idx = ir_args(context, builder, signature, args)

            pw, pa, pdw, pad, po = ptr(0), ptr(2), ptr(5), ptr(7), ptr(12)
            w_off, a_off, a_st, dw_off, ad_off, ad_st, n, o_off = (idx(k) for k in (1, 3, 4, 6, 8, 9, 10, 13))
            one = context.cast(builder, args[11], sa[11], types.boolean)
            fma_v = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v8f, [v8f, v8f, v8f]), "llvm.fma.v8f32")
            fma_s = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
            red = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [v8i]),
                                                 "llvm.vector.reduce.add.v8i32")
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [0.0] * 8)) for _ in range(NT)]
            raccs = [cgutils.alloca_once_value(builder, ir.Constant(f32, 0.0)) for _ in range(NT)]
            a0 = [builder.add(a_off, builder.mul(a_st, ir.Constant(i64, j))) for j in range(NT)]
            d0 = [builder.add(ad_off, builder.mul(ad_st, ir.Constant(i64, j))) for j in range(NT)]
            c32 = ir.Constant(i64, 32)
            ev16, od16 = (ir.Constant(ir.VectorType(i32, 16), [2 * k + u for k in range(16)]) for u in (0, 1))
            ev8, od8 = (ir.Constant(v8i, [2 * k + u for k in range(8)]) for u in (0, 1))
            zero8 = ir.Constant(v8i, [0] * 8)

            def vload(p, off):
                return builder.load(builder.bitcast(builder.gep(p, [off]), v32s.as_pointer()), align=2)

            with builder.if_else(one) as (then, other):
                for single in (True, False):
                    with (then if single else other):
                        with cgutils.for_range(builder, n) as loop:
                            b = loop.index
                            o = builder.mul(b, c32)
                            vw = builder.sext(vload(pw, builder.add(w_off, o)), v32i)
                            dwb = builder.load(builder.gep(pdw, [builder.add(dw_off, b)]))
                            for j in range(NT):
                                p = builder.mul(vw, builder.sext(vload(pa, builder.add(a0[j], o)), v32i))
                                # even + odd products (the vpmaddwd pattern), then pairs -> 8 lanes of 4
                                pr = builder.add(builder.shuffle_vector(p, p, ev16), builder.shuffle_vector(p, p, od16))
                                lanes = builder.add(builder.shuffle_vector(pr, pr, ev8),
                                                    builder.shuffle_vector(pr, pr, od8))
                                d = builder.fmul(dwb, builder.load(builder.gep(pad, [builder.add(d0[j], b)])))
                                if single:
                                    s = builder.sitofp(builder.call(red, [lanes]), f32)
                                    builder.store(builder.call(fma_s, [s, d, builder.load(raccs[j])]), raccs[j])
                                else:
                                    dv = builder.insert_element(ir.Constant(v8f, ir.Undefined), d,
                                                                ir.Constant(i32, 0))
                                    dv = builder.shuffle_vector(dv, dv, zero8)
                                    builder.store(builder.call(fma_v, [dv, builder.sitofp(lanes, v8f),
                                                                       builder.load(accs[j])]), accs[j])
                        for j in range(NT):
                            if single:
                                r = builder.load(raccs[j])
                            else:
                                v = builder.load(accs[j])
                                e = [builder.extract_element(v, ir.Constant(i32, k)) for k in range(8)]
                                r = builder.fadd(builder.fadd(builder.fadd(e[4], e[0]), builder.fadd(e[6], e[2])),
                                                 builder.fadd(builder.fadd(e[5], e[1]), builder.fadd(e[7], e[3])))
                            builder.store(r, builder.gep(po, [builder.add(o_off, ir.Constant(i64, j))]))
            return context.get_dummy_value()

        return sig, codegen

    return lg_dot


lg_dot_1 = _make(1)   # one token
lg_dot_4 = _make(4)   # four tokens against one decoded weight row: independent accumulator chains


def _make_decode(bits: int):
    """Row decoder: int16 codes of every 32-element block of one GGUF row (see lg_decode_*)."""

    @intrinsic
    def lg_decode(typingctx, row, nb, bsz, qs_off, qh_off, sub, v):
        sig = types.void(row, nb, bsz, qs_off, qh_off, sub, v)

        def codegen(context, builder, signature, args):
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            ptr, idx = ir_args(context, builder, signature, args)
            pr, pv = ptr(0), ptr(6)
            n, bsz, qs_off, qh_off = (idx(k) for k in (1, 2, 3, 4))
            sub = builder.trunc(idx(5), i16)

            def splat(x, ty, width):
                vt = ir.VectorType(ty, width)
                u = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
                return builder.shuffle_vector(u, u, ir.Constant(ir.VectorType(i32, width), [0] * width))

            def load(ty, width, off):
                vt = ir.VectorType(ty, width)
                return builder.load(builder.bitcast(builder.gep(pr, [off]), vt.as_pointer()), align=1)

            def store(x, width, off):
                vt = ir.VectorType(i16, width)
                builder.store(x, builder.bitcast(builder.gep(pv, [off]), vt.as_pointer()), align=2)

            def nibbles(base, vo):
                x = load(i8, 16, builder.add(base, qs_off))
                v16 = ir.VectorType(i16, 16)
                lo = builder.zext(builder.and_(x, ir.Constant(ir.VectorType(i8, 16), [15] * 16)), v16)
                hi = builder.zext(builder.lshr(x, ir.Constant(ir.VectorType(i8, 16), [4] * 16)), v16)
                if bits == 5:                               # bit i of qh (LE u32) is value i's 5th bit
                    qhp = builder.bitcast(builder.gep(pr, [builder.add(base, qh_off)]), i32.as_pointer())
                    qh = splat(builder.load(qhp, align=1), i32, 16)
                    v32 = ir.VectorType(i32, 16)
                    for half, sh in ((0, 0), (1, 16)):
                        t = builder.lshr(qh, ir.Constant(v32, [sh + i for i in range(16)]))
                        t = builder.shl(builder.and_(t, ir.Constant(v32, [1] * 16)), ir.Constant(v32, [4] * 16))
                        t = builder.trunc(t, v16)
                        if half == 0:
                            lo = builder.or_(lo, t)
                        else:
                            hi = builder.or_(hi, t)
                s = splat(sub, i16, 16)
                store(builder.sub(lo, s), 16, vo)
                store(builder.sub(hi, s), 16, builder.add(vo, ir.Constant(i64, 16)))

            with cgutils.for_range(builder, n) as loop:
                b = loop.index
                base = builder.mul(b, bsz)
                vo = builder.mul(b, ir.Constant(i64, 32))
                if bits == 8:                                   # int8 codes
                    store(builder.sext(load(i8, 32, builder.add(base, qs_off)), ir.VectorType(i16, 32)), 32, vo)
                else:
                    nibbles(base, vo)
            return context.get_dummy_value()

        return sig, codegen

    return lg_decode


# lg_decode_B(row, nb, bsz, qs_off, qh_off, sub, v): v[32b:+32] (int16) from block b at row[b*bsz:]
#   8: v = int8 qs[0:32]                                        (Q8_0)
#   4: v[i] = (qs[i] & 15) - sub, v[16+i] = (qs[i] >> 4) - sub  (Q4_0 sub 8, Q4_1 sub 0)
#   5: as 4 with bit i / 16+i of the u32 qh at qh_off as bit 4  (Q5_0 sub 16, Q5_1 sub 0)
lg_decode_8 = _make_decode(8)
lg_decode_4 = _make_decode(4)
lg_decode_5 = _make_decode(5)
