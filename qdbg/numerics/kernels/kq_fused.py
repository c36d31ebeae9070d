"""K-quant x Q8_K for the few tokens of a decode step, as fused loops over the GGUF bytes.

kq_matmul unpacks every weight row into codes and scales first and then reduces them, a cost that
a prompt of many tokens shares out but a decode step (one token) pays in full: a one-token pass of
a TinyLlama-shaped Q4_K_M model spent most of its time unpacking. llama.cpp's kernels instead
decode each block in registers as they go; this does the same for the two cases decode steps run
most: Q4_K in CPU_REPACK with fewer than 4 tokens, which is ggml_gemv_q4_K_8x8_q8_K for every token
(kquants.py: the n_tok % 4 rows of the repacked path go through the gemv), and Q6_K (the output
matrix and half the FFN-down and V matrices of a Q4_K_M or Q5_K_M file) with fewer than 8 tokens,
ggml_vec_dot_q6_K_q8_K.

Q4_K gemv:
per 256-element block of a row (144 bytes: d, dmin as F16, 12 bytes of 6-bit scales and mins,
128 bytes of nibbles), in the gemv's float order (kq_matmul's docstring, `repack`):
  s1 = sum over the 8 sub-blocks of scale * (codes . q), s2 = sum of min * (the token's bsums per
  32); acc = fma(f(s1), d*yd, acc); accm = fma(f(s2), dmin*yd, accm); out = acc - accm.
The codes are the low and high nibbles of each 32 bytes (sub-blocks 2i and 2i+1), multiplied
with the u8 x s8 byte madd (kq_simd.madd_builder; integers, exact in any order); the scales and
mins are get_scale_min_k4 of the 12 bytes, unrolled.

Q6_K vec_dot: per block (210 bytes: ql[128], qh[64], int8 scales[16], d as F16), the codes of
each 128 elements come from 64 bytes of ql and 32 of qh (low/high nibbles, 2-bit pairs of qh);
the 8 integer lanes of the AVX2 kernel (lane k: elements with (e % 32) // 4 == k, over the block)
are the byte-madd lanes summed over the block's 8 chunks of 32; lane k then loses
32 * (sc[2k]*bsum[2k] + sc[2k+1]*bsum[2k+1]) and acc = fma(yd*d, f(lane), acc) lane by lane;
the result is ggml's fixed horizontal sum of the 8 lanes.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from qdbg.numerics.kernels.kq_simd import madd_builder, native_avx2
from qdbg.numerics.kernels.nb import ir_args, jit

Q4_K_BLOCK = 144


def _scale_min_k4(b, prow, off):
    """get_scale_min_k4 of the 12 bytes at prow[off:], unrolled: ([8 scales], [8 mins]) as i32."""
    i32, i64 = ir.IntType(32), ir.IntType(64)

    def c32(v):
        return ir.Constant(i32, v)

    sb = [b.zext(b.load(b.gep(prow, [b.add(off, ir.Constant(i64, k))])), i32) for k in range(12)]
    sc, mn = [], []
    for j in range(8):
        if j < 4:
            sc.append(b.and_(sb[j], c32(63)))
            mn.append(b.and_(sb[j + 4], c32(63)))
        else:
            sc.append(b.or_(b.and_(sb[j + 4], c32(0xF)), b.shl(b.lshr(sb[j - 4], c32(6)), c32(4))))
            mn.append(b.or_(b.lshr(sb[j + 4], c32(4)), b.shl(b.lshr(sb[j], c32(6)), c32(4))))
    return sc, mn


def _splat(b, x, vty):
    """A vector of type vty with every lane x."""
    i32 = ir.IntType(32)
    v = b.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(i32, 0))
    return b.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count))


def _hsum8(b, v):
    """ggml's hsum_float_8: ((v4+v0)+(v6+v2))+((v5+v1)+(v7+v3)), each add in float32."""
    def lane(k):
        return b.extract_element(v, ir.Constant(ir.IntType(32), k))

    x = b.fadd(b.fadd(lane(4), lane(0)), b.fadd(lane(6), lane(2)))
    y = b.fadd(b.fadd(lane(5), lane(1)), b.fadd(lane(7), lane(3)))
    return b.fadd(x, y)


def _make_q4k_row(native: bool | None = None):
    use_native = native_avx2() if native is None else native

    @intrinsic
    def q4k_gemv_row(typingctx, row, q, yd, bs32, nb):
        """float32: one row (uint8 [nb*144]) times one token (q int8 [nb*256], yd float32 [nb],
        bs32 int32 [nb*8]: the bsums per 32 elements)."""
        sig = types.float32(row, q, yd, bs32, nb)

        def codegen(context, builder, signature, args):
            b = builder
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            f32 = ir.FloatType()
            v32b, v16w, v8d = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
            ptr, idx = ir_args(context, builder, signature, args)
            prow, pq, pyd, pbs = ptr(0), ptr(1), ptr(2), ptr(3)
            n_blocks = idx(4)
            madd = madd_builder(b, use_native)
            fma = cgutils.get_or_insert_function(b.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
            red8 = cgutils.get_or_insert_function(b.module, ir.FunctionType(i32, [v8d]),
                                                  "llvm.vector.reduce.add.v8i32")

            def c64(v):
                return ir.Constant(i64, v)

            def c32(v):
                return ir.Constant(i32, v)

            def at(p, off, ty):
                return b.bitcast(b.gep(p, [off]), ty.as_pointer())

            def f16(off):
                h = b.load(at(prow, off, i16), align=1)
                return b.fpext(b.bitcast(h, ir.HalfType()), f32)

            def splat16(x):
                return _splat(b, b.trunc(x, i16), v16w)

            low = ir.Constant(v32b, [0x0F] * 32)
            four = ir.Constant(v32b, [4] * 32)
            acc = cgutils.alloca_once_value(b, ir.Constant(f32, 0.0))
            accm = cgutils.alloca_once_value(b, ir.Constant(f32, 0.0))
            with cgutils.for_range(b, n_blocks) as loop:
                blk = loop.index
                bo = b.mul(blk, c64(Q4_K_BLOCK))
                d, dmin = f16(bo), f16(b.add(bo, c64(2)))
                sc, mn = _scale_min_k4(b, prow, b.add(bo, c64(4)))
                qo = b.mul(blk, c64(256))
                tot = None
                for i in range(4):                      # 32 bytes: sub-blocks 2i (low) and 2i+1 (high)
                    vc = b.load(at(prow, b.add(bo, c64(16 + 32 * i)), v32b), align=1)
                    lo = b.and_(vc, low)
                    hi = b.and_(b.lshr(vc, four), low)
                    ql = b.load(at(pq, b.add(qo, c64(64 * i)), v32b), align=1)
                    qh = b.load(at(pq, b.add(qo, c64(64 * i + 32)), v32b), align=1)
                    part = b.add(madd(lo, ql, splat16(sc[2 * i])), madd(hi, qh, splat16(sc[2 * i + 1])))
                    tot = part if tot is None else b.add(tot, part)
                s1 = b.call(red8, [tot])
                s2 = None
                for j in range(8):
                    bsj = b.load(b.gep(pbs, [b.add(b.mul(blk, c64(8)), c64(j))]))
                    t = b.mul(mn[j], bsj)
                    s2 = t if s2 is None else b.add(s2, t)
                ydb = b.load(b.gep(pyd, [blk]))
                dd = b.fmul(d, ydb)
                dm = b.fmul(dmin, ydb)
                b.store(b.call(fma, [b.sitofp(s1, f32), dd, b.load(acc)]), acc)
                b.store(b.call(fma, [b.sitofp(s2, f32), dm, b.load(accm)]), accm)
            return b.fsub(b.load(acc), b.load(accm))

        return sig, codegen

    return q4k_gemv_row


q4k_gemv_row = _make_q4k_row()

Q6_K_BLOCK = 210


def _make_q6k_row(native: bool | None = None):
    use_native = native_avx2() if native is None else native

    @intrinsic
    def q6k_vec_dot_row(typingctx, row, q, yd, bs, nb):
        """float32: one row (uint8 [nb*210]) times one token (q int8 [nb*256], yd float32 [nb],
        bs int16 [nb*16]: the bsums per 16 elements)."""
        sig = types.float32(row, q, yd, bs, nb)

        def codegen(context, builder, signature, args):
            b = builder
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            f32 = ir.FloatType()
            v32b, v16w, v8d, v8f = (ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8),
                                    ir.VectorType(f32, 8))
            v16b, v16d = ir.VectorType(i8, 16), ir.VectorType(i32, 16)
            ptr, idx = ir_args(context, builder, signature, args)
            prow, pq, pyd, pbs = ptr(0), ptr(1), ptr(2), ptr(3)
            n_blocks = idx(4)
            madd = madd_builder(b, use_native)
            fma8 = cgutils.get_or_insert_function(b.module, ir.FunctionType(v8f, [v8f] * 3), "llvm.fma.v8f32")

            def c64(v):
                return ir.Constant(i64, v)

            def at(p, off, ty):
                return b.bitcast(b.gep(p, [off]), ty.as_pointer())

            def bytes_(v):
                return ir.Constant(v32b, [v] * 32)

            spread = ir.Constant(ir.VectorType(i32, 16), [0] * 8 + [1] * 8)
            ev = ir.Constant(v8d, [2 * k for k in range(8)])
            od = ir.Constant(v8d, [2 * k + 1 for k in range(8)])
            acc = cgutils.alloca_once_value(b, ir.Constant(v8f, [0.0] * 8))
            with cgutils.for_range(b, n_blocks) as loop:
                blk = loop.index
                bo = b.mul(blk, c64(Q6_K_BLOCK))
                qo = b.mul(blk, c64(256))
                scb = b.load(at(prow, b.add(bo, c64(192)), v16b), align=1)     # int8 scales
                sc32 = b.sext(scb, v16d)
                lanes = None
                for j in range(2):                                          # 128 elements each
                    A = b.load(at(prow, b.add(bo, c64(64 * j)), v32b), align=1)
                    C = b.load(at(prow, b.add(bo, c64(64 * j + 32)), v32b), align=1)
                    H = b.load(at(prow, b.add(bo, c64(128 + 32 * j)), v32b), align=1)
                    lo4 = bytes_(0x0F)
                    three = bytes_(3)
                    codes = [
                        b.or_(b.and_(A, lo4), b.shl(b.and_(H, three), bytes_(4))),
                        b.or_(b.and_(C, lo4), b.shl(b.and_(b.lshr(H, bytes_(2)), three), bytes_(4))),
                        b.or_(b.lshr(A, bytes_(4)), b.shl(b.and_(b.lshr(H, bytes_(4)), three), bytes_(4))),
                        b.or_(b.lshr(C, bytes_(4)), b.shl(b.lshr(H, bytes_(6)), bytes_(4))),
                    ]
                    for i, vc in enumerate(codes):                          # chunk g = 4j + i
                        g = 4 * j + i
                        two = b.shuffle_vector(sc32, sc32, ir.Constant(ir.VectorType(i32, 2), [2 * g, 2 * g + 1]))
                        vs = b.trunc(b.shuffle_vector(two, two, spread), v16w)
                        vq = b.load(at(pq, b.add(qo, c64(32 * g)), v32b), align=1)
                        part = madd(vc, vq, vs)
                        lanes = part if lanes is None else b.add(lanes, part)
                bsv = b.sext(b.load(at(pbs, b.mul(blk, c64(16)), v16w), align=2), v16d)
                prod = b.mul(sc32, bsv)
                corr = b.add(b.shuffle_vector(prod, prod, ev), b.shuffle_vector(prod, prod, od))
                lk = b.sub(lanes, b.mul(corr, ir.Constant(v8d, [32] * 8)))
                d = b.fpext(b.bitcast(b.load(at(prow, b.add(bo, c64(208)), i16), align=1), ir.HalfType()), f32)
                dd = b.fmul(b.load(b.gep(pyd, [blk])), d)
                b.store(b.call(fma8, [_splat(b, dd, v8f), b.sitofp(lk, v8f), b.load(acc)]), acc)
            return _hsum8(b, b.load(acc))

        return sig, codegen

    return q6k_vec_dot_row


q6k_vec_dot_row = _make_q6k_row()

Q5_K_BLOCK = 176


def _make_q5k_row(native: bool | None = None):
    use_native = native_avx2() if native is None else native

    @intrinsic
    def q5k_vec_dot_row(typingctx, row, q, yd, bs32, nb):
        """float32: one row (uint8 [nb*176]) times one token (q int8 [nb*256], yd float32 [nb],
        bs32 int32 [nb*8]: the bsums per 32 elements)."""
        sig = types.float32(row, q, yd, bs32, nb)

        def codegen(context, builder, signature, args):
            b = builder
            i8, i16, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
            f32 = ir.FloatType()
            v32b, v16w, v8f = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(f32, 8)
            ptr, idx = ir_args(context, builder, signature, args)
            prow, pq, pyd, pbs = ptr(0), ptr(1), ptr(2), ptr(3)
            n_blocks = idx(4)
            madd = madd_builder(b, use_native)
            fma = cgutils.get_or_insert_function(b.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
            fma8 = cgutils.get_or_insert_function(b.module, ir.FunctionType(v8f, [v8f] * 3), "llvm.fma.v8f32")

            def c64(v):
                return ir.Constant(i64, v)

            def at(p, off, ty):
                return b.bitcast(b.gep(p, [off]), ty.as_pointer())

            def bytes_(v):
                return ir.Constant(v32b, [v] * 32)

            acc = cgutils.alloca_once_value(b, ir.Constant(v8f, [0.0] * 8))
            summs = cgutils.alloca_once_value(b, ir.Constant(f32, 0.0))
            with cgutils.for_range(b, n_blocks) as loop:
                blk = loop.index
                bo = b.mul(blk, c64(Q5_K_BLOCK))
                qo = b.mul(blk, c64(256))
                d = b.fpext(b.bitcast(b.load(at(prow, bo, i16), align=1), ir.HalfType()), f32)
                dmin = b.fpext(b.bitcast(b.load(at(prow, b.add(bo, c64(2)), i16), align=1), ir.HalfType()), f32)
                sc, mn = _scale_min_k4(b, prow, b.add(bo, c64(4)))
                H = b.load(at(prow, b.add(bo, c64(16)), v32b), align=1)
                lanes = None
                for j in range(4):                      # 32 bytes of qs: sub-blocks 2j (low), 2j+1 (high)
                    Q = b.load(at(prow, b.add(bo, c64(48 + 32 * j)), v32b), align=1)
                    lo = b.or_(b.and_(Q, bytes_(0x0F)), b.shl(b.and_(b.lshr(H, bytes_(2 * j)), bytes_(1)), bytes_(4)))
                    hi = b.or_(b.lshr(Q, bytes_(4)), b.shl(b.and_(b.lshr(H, bytes_(2 * j + 1)), bytes_(1)), bytes_(4)))
                    ql = b.load(at(pq, b.add(qo, c64(64 * j)), v32b), align=1)
                    qh = b.load(at(pq, b.add(qo, c64(64 * j + 32)), v32b), align=1)
                    part = b.add(madd(lo, ql, _splat(b, b.trunc(sc[2 * j], i16), v16w)),
                                 madd(hi, qh, _splat(b, b.trunc(sc[2 * j + 1], i16), v16w)))
                    lanes = part if lanes is None else b.add(lanes, part)
                tot = None
                for j in range(8):
                    t = b.mul(mn[j], b.load(b.gep(pbs, [b.add(b.mul(blk, c64(8)), c64(j))])))
                    tot = t if tot is None else b.add(tot, t)
                ydb = b.load(b.gep(pyd, [blk]))
                dd = b.fmul(ydb, d)
                dmn = b.fmul(b.fneg(ydb), dmin)
                b.store(b.call(fma, [dmn, b.sitofp(tot, f32), b.load(summs)]), summs)
                b.store(b.call(fma8, [_splat(b, dd, v8f), b.sitofp(lanes, v8f), b.load(acc)]), acc)
            return b.fadd(_hsum8(b, b.load(acc)), b.load(summs))

        return sig, codegen

    return q5k_vec_dot_row


q5k_vec_dot_row = _make_q5k_row()


@jit
def q6k_vec_dot(w_raw, q, yd, bs, out):
    """out [n_tok, n_out] = Q6_K rows (GGUF bytes, uint8 [n_out, nb*210]) x Q8_K tokens (n_tok < 8),
    each output as ggml_vec_dot_q6_K_q8_K computes it."""
    nb = q.shape[1] // 256
    for r in range(w_raw.shape[0]):
        wr = w_raw[r]
        for t in range(q.shape[0]):
            out[t, r] = q6k_vec_dot_row(wr, q[t], yd[t], bs[t], nb)


@jit
def q5k_vec_dot(w_raw, q, yd, bs32, out):
    """out [n_tok, n_out] = Q5_K rows (GGUF bytes, uint8 [n_out, nb*176]) x Q8_K tokens (n_tok < 8),
    each output as ggml_vec_dot_q5_K_q8_K computes it."""
    nb = q.shape[1] // 256
    for r in range(w_raw.shape[0]):
        wr = w_raw[r]
        for t in range(q.shape[0]):
            out[t, r] = q5k_vec_dot_row(wr, q[t], yd[t], bs32[t], nb)


@jit
def q4k_gemv(w_raw, q, yd, bs32, out):
    """out [n_tok, n_out] = Q4_K rows (GGUF bytes, uint8 [n_out, nb*144]) x Q8_K tokens, each token
    as ggml_gemv_q4_K_8x8_q8_K computes it."""
    nb = q.shape[1] // 256
    for r in range(w_raw.shape[0]):
        wr = w_raw[r]
        for t in range(q.shape[0]):
            out[t, r] = q4k_gemv_row(wr, q[t], yd[t], bs32[t], nb)
