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

Q5_K vec_dot: per block (176 bytes: d, dmin, 12 bytes of scales and mins, qh[32], qs[128]), the
codes are the nibbles of qs with bit 2j (low) or 2j+1 (high) of qh as their fifth bit; the 8
integer lanes (as Q6_K's below) give acc = fma(yd*d, f(lane), acc) lane by lane, the mins one
scalar chain summs = fma(-yd*dmin, f(sum of min * bsum per 32), summs); the result is the 8-lane
horizontal sum plus summs.

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

Q4_K_BLOCK, Q5_K_BLOCK, Q6_K_BLOCK = 144, 176, 210
I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
V32B, V16B, V16W, V8D, V16D, V8F = (ir.VectorType(I8, 32), ir.VectorType(I8, 16), ir.VectorType(I16, 16),
                                    ir.VectorType(I32, 8), ir.VectorType(I32, 16), ir.VectorType(F32, 8))


def c64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def c32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


class _Row:
    """One fused row kernel's codegen: its arguments (row bytes, q, yd, bsums, nb) and IR helpers."""

    def __init__(self, context, builder, signature, args, native: bool) -> None:
        self.b = builder
        ptr, idx = ir_args(context, builder, signature, args)
        self.row, self.q, self.yd, self.bs = ptr(0), ptr(1), ptr(2), ptr(3)
        self.n_blocks = idx(4)
        self.madd = madd_builder(builder, native)
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(F32, [F32] * 3), "llvm.fma.f32")
        self.fma8 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V8F, [V8F] * 3),
                                                   "llvm.fma.v8f32")

    def load(self, p, off, ty, align=1):
        """A `ty` at element offset `off` of pointer `p`."""
        return self.b.load(self.b.bitcast(self.b.gep(p, [off]), ty.as_pointer()), align=align)

    def byte(self, off):
        """row[off] as i32 (zero-extended)."""
        return self.b.zext(self.b.load(self.b.gep(self.row, [off])), I32)

    def f16(self, off):
        """The F16 at row[off:off+2] as float32 (exact)."""
        return self.b.fpext(self.b.bitcast(self.load(self.row, off, I16), ir.HalfType()), F32)

    def scalar(self, p, i):
        return self.b.load(self.b.gep(p, [i]))

    def splat(self, x, vty):
        """A vector of type vty with every lane x."""
        v = self.b.insert_element(ir.Constant(vty, ir.Undefined), x, c32(0))
        return self.b.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))

    def bytes_(self, v):
        return ir.Constant(V32B, [v] * 32)

    def scale_min_k4(self, off):
        """get_scale_min_k4 of the 12 bytes at row[off:], unrolled: ([8 scales], [8 mins]) as i32."""
        b = self.b
        sb = [self.byte(b.add(off, c64(k))) for k in range(12)]
        sc, mn = [], []
        for j in range(8):
            if j < 4:
                sc.append(b.and_(sb[j], c32(63)))
                mn.append(b.and_(sb[j + 4], c32(63)))
            else:
                sc.append(b.or_(b.and_(sb[j + 4], c32(0xF)), b.shl(b.lshr(sb[j - 4], c32(6)), c32(4))))
                mn.append(b.or_(b.lshr(sb[j + 4], c32(4)), b.shl(b.lshr(sb[j], c32(6)), c32(4))))
        return sc, mn

    def mins_dot(self, mn, blk):
        """sum over the 8 sub-blocks of min * the token's bsum per 32 (the two bsums per 16 of
        the quantized activation, int16 [nb*16], added)."""
        b = self.b
        tot = None
        for j in range(8):
            at = b.add(b.mul(blk, c64(16)), c64(2 * j))
            s32 = b.add(b.sext(self.scalar(self.bs, at), I32), b.sext(self.scalar(self.bs, b.add(at, c64(1))), I32))
            t = b.mul(mn[j], s32)
            tot = t if tot is None else b.add(tot, t)
        return tot

    def hsum8(self, v):
        """ggml's hsum_float_8: ((v4+v0)+(v6+v2))+((v5+v1)+(v7+v3)), each add in float32."""
        b = self.b

        def lane(k):
            return b.extract_element(v, c32(k))

        return b.fadd(b.fadd(b.fadd(lane(4), lane(0)), b.fadd(lane(6), lane(2))),
                      b.fadd(b.fadd(lane(5), lane(1)), b.fadd(lane(7), lane(3))))


def _fused_row(block_loop, native: bool | None):
    """An intrinsic float32 f(row, q, yd, bs, nb) whose codegen is `block_loop(_Row)`."""
    use_native = native_avx2() if native is None else native

    @intrinsic
    def fused_row(typingctx, row, q, yd, bs, nb):
        sig = types.float32(row, q, yd, bs, nb)

        def codegen(context, builder, signature, args):
            return block_loop(_Row(context, builder, signature, args, use_native))

        return sig, codegen

    return fused_row


def _q4k_gemv(g: _Row):
    """Q4_K, ggml_gemv_q4_K_8x8_q8_K's order."""
    b = g.b
    acc = cgutils.alloca_once_value(b, ir.Constant(F32, 0.0))
    accm = cgutils.alloca_once_value(b, ir.Constant(F32, 0.0))
    with cgutils.for_range(b, g.n_blocks) as loop:
        blk = loop.index
        bo = b.mul(blk, c64(Q4_K_BLOCK))
        qo = b.mul(blk, c64(256))
        d, dmin = g.f16(bo), g.f16(b.add(bo, c64(2)))
        sc, mn = g.scale_min_k4(b.add(bo, c64(4)))
        tot = None
        for i in range(4):                      # 32 bytes: sub-blocks 2i (low nibbles) and 2i+1 (high)
            vc = g.load(g.row, b.add(bo, c64(16 + 32 * i)), V32B)
            lo = b.and_(vc, g.bytes_(0x0F))
            hi = b.and_(b.lshr(vc, g.bytes_(4)), g.bytes_(0x0F))
            ql = g.load(g.q, b.add(qo, c64(64 * i)), V32B)
            qh = g.load(g.q, b.add(qo, c64(64 * i + 32)), V32B)
            part = b.add(g.madd(lo, ql, g.splat(b.trunc(sc[2 * i], I16), V16W)),
                         g.madd(hi, qh, g.splat(b.trunc(sc[2 * i + 1], I16), V16W)))
            tot = part if tot is None else b.add(tot, part)
        s1 = b.call(cgutils.get_or_insert_function(b.module, ir.FunctionType(I32, [V8D]),
                                                   "llvm.vector.reduce.add.v8i32"), [tot])
        s2 = g.mins_dot(mn, blk)
        ydb = g.scalar(g.yd, blk)
        b.store(b.call(g.fma, [b.sitofp(s1, F32), b.fmul(d, ydb), b.load(acc)]), acc)
        b.store(b.call(g.fma, [b.sitofp(s2, F32), b.fmul(dmin, ydb), b.load(accm)]), accm)
    return b.fsub(b.load(acc), b.load(accm))


def _q5k_vec_dot(g: _Row):
    """Q5_K, ggml_vec_dot_q5_K_q8_K's order."""
    b = g.b
    acc = cgutils.alloca_once_value(b, ir.Constant(V8F, [0.0] * 8))
    summs = cgutils.alloca_once_value(b, ir.Constant(F32, 0.0))
    with cgutils.for_range(b, g.n_blocks) as loop:
        blk = loop.index
        bo = b.mul(blk, c64(Q5_K_BLOCK))
        qo = b.mul(blk, c64(256))
        d, dmin = g.f16(bo), g.f16(b.add(bo, c64(2)))
        sc, mn = g.scale_min_k4(b.add(bo, c64(4)))
        H = g.load(g.row, b.add(bo, c64(16)), V32B)
        lanes = None
        for j in range(4):                      # 32 bytes of qs: sub-blocks 2j (low), 2j+1 (high)
            Q = g.load(g.row, b.add(bo, c64(48 + 32 * j)), V32B)
            lo = b.or_(b.and_(Q, g.bytes_(0x0F)),
                       b.shl(b.and_(b.lshr(H, g.bytes_(2 * j)), g.bytes_(1)), g.bytes_(4)))
            hi = b.or_(b.lshr(Q, g.bytes_(4)),
                       b.shl(b.and_(b.lshr(H, g.bytes_(2 * j + 1)), g.bytes_(1)), g.bytes_(4)))
            ql = g.load(g.q, b.add(qo, c64(64 * j)), V32B)
            qh = g.load(g.q, b.add(qo, c64(64 * j + 32)), V32B)
            part = b.add(g.madd(lo, ql, g.splat(b.trunc(sc[2 * j], I16), V16W)),
                         g.madd(hi, qh, g.splat(b.trunc(sc[2 * j + 1], I16), V16W)))
            lanes = part if lanes is None else b.add(lanes, part)
        tot = g.mins_dot(mn, blk)
        ydb = g.scalar(g.yd, blk)
        dd = b.fmul(ydb, d)
        dmn = b.fmul(b.fneg(ydb), dmin)
        b.store(b.call(g.fma, [dmn, b.sitofp(tot, F32), b.load(summs)]), summs)
        b.store(b.call(g.fma8, [g.splat(dd, V8F), b.sitofp(lanes, V8F), b.load(acc)]), acc)
    return b.fadd(g.hsum8(b.load(acc)), b.load(summs))


def _q6k_vec_dot(g: _Row):
    """Q6_K, ggml_vec_dot_q6_K_q8_K's order."""
    b = g.b
    spread = ir.Constant(ir.VectorType(I32, 16), [0] * 8 + [1] * 8)
    ev = ir.Constant(V8D, [2 * k for k in range(8)])
    od = ir.Constant(V8D, [2 * k + 1 for k in range(8)])
    acc = cgutils.alloca_once_value(b, ir.Constant(V8F, [0.0] * 8))
    with cgutils.for_range(b, g.n_blocks) as loop:
        blk = loop.index
        bo = b.mul(blk, c64(Q6_K_BLOCK))
        qo = b.mul(blk, c64(256))
        sc32 = b.sext(g.load(g.row, b.add(bo, c64(192)), V16B), V16D)     # int8 scales
        lanes = None
        for j in range(2):                                          # 128 elements each
            A = g.load(g.row, b.add(bo, c64(64 * j)), V32B)
            C = g.load(g.row, b.add(bo, c64(64 * j + 32)), V32B)
            H = g.load(g.row, b.add(bo, c64(128 + 32 * j)), V32B)
            lo4, three, four = g.bytes_(0x0F), g.bytes_(3), g.bytes_(4)
            codes = [
                b.or_(b.and_(A, lo4), b.shl(b.and_(H, three), four)),
                b.or_(b.and_(C, lo4), b.shl(b.and_(b.lshr(H, g.bytes_(2)), three), four)),
                b.or_(b.lshr(A, four), b.shl(b.and_(b.lshr(H, four), three), four)),
                b.or_(b.lshr(C, four), b.shl(b.lshr(H, g.bytes_(6)), four)),
            ]
            for i, vc in enumerate(codes):                          # chunk k = 4j + i of 32
                k = 4 * j + i
                two = b.shuffle_vector(sc32, sc32, ir.Constant(ir.VectorType(I32, 2), [2 * k, 2 * k + 1]))
                vs = b.trunc(b.shuffle_vector(two, two, spread), V16W)
                part = g.madd(vc, g.load(g.q, b.add(qo, c64(32 * k)), V32B), vs)
                lanes = part if lanes is None else b.add(lanes, part)
        bsv = b.sext(g.load(g.bs, b.mul(blk, c64(16)), V16W, align=2), V16D)
        prod = b.mul(sc32, bsv)
        corr = b.add(b.shuffle_vector(prod, prod, ev), b.shuffle_vector(prod, prod, od))
        lk = b.sub(lanes, b.mul(corr, ir.Constant(V8D, [32] * 8)))
        dd = b.fmul(g.scalar(g.yd, blk), g.f16(b.add(bo, c64(208))))
        b.store(b.call(g.fma8, [g.splat(dd, V8F), b.sitofp(lk, V8F), b.load(acc)]), acc)
    return g.hsum8(b.load(acc))


def _make_q4k_row(native: bool | None = None):
    return _fused_row(_q4k_gemv, native)


def _make_q5k_row(native: bool | None = None):
    return _fused_row(_q5k_vec_dot, native)


def _make_q6k_row(native: bool | None = None):
    return _fused_row(_q6k_vec_dot, native)


q4k_gemv_row, q5k_vec_dot_row, q6k_vec_dot_row = _make_q4k_row(), _make_q5k_row(), _make_q6k_row()


GEMV_Q4_K, VEC_DOT_Q5_K, VEC_DOT_Q6_K = 0, 1, 2


@jit
def fused_matmul(kind, w_raw, q, yd, bs, out):
    """out [n_tok, n_out] = K-quant rows (GGUF bytes, uint8 [n_out, row bytes]) x Q8_K tokens
    (q int8, yd float32, bs the int16 bsums per 16, as quantized), each output by the fused row
    kernel `kind`: GEMV_Q4_K (repacked Q4_K, fewer than 4 tokens), VEC_DOT_Q5_K or VEC_DOT_Q6_K
    (fewer than 8 tokens), as ggml's gemv / vec_dot computes it."""
    nb = q.shape[1] // 256
    for r in range(w_raw.shape[0]):
        wr = w_raw[r]
        for t in range(q.shape[0]):
            if kind == GEMV_Q4_K:
                out[t, r] = q4k_gemv_row(wr, q[t], yd[t], bs[t], nb)
            elif kind == VEC_DOT_Q5_K:
                out[t, r] = q5k_vec_dot_row(wr, q[t], yd[t], bs[t], nb)
            else:
                out[t, r] = q6k_vec_dot_row(wr, q[t], yd[t], bs[t], nb)
