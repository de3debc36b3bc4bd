"""Matrix products: a call into the BLAS that the loader found, or a generated loop kernel without one."""
from __future__ import annotations


from llvmlite import ir

from ..element import counted_loop  # noqa: F401  (the loops of the BLAS fallbacks)
from ..scalar import I64, LLTYPES

PTR = ir.PointerType()
I32 = ir.IntType(32)
ZERO = ir.Constant(I64, 0)
ONE = ir.Constant(I64, 1)

# Globals the loader fills in (runtime/cpu.py): the cblas_?gemm address, and whether its
# integers are 64-bit (NumPy's scipy_openblas64_) or 32-bit (a system libopenblas)
BLAS_GLOBALS = {"f32": "gradc_blas_sgemm", "f64": "gradc_blas_dgemm"}
GEMV_GLOBALS = {"f32": "gradc_blas_sgemv", "f64": "gradc_blas_dgemv"}
ILP64_GLOBAL = "gradc_blas_ilp64"
# BLAS's own thread count (OpenBLAS's get/set entry points) and the address of a process-wide
# record {lock, calls inside, count to restore}: while a parallel region multiplies matrices
# on gradc's threads, BLAS runs on the calling thread (parallel.py, blas_single)
BLAS_THREAD_GLOBALS = ("gradc_blas_get_threads", "gradc_blas_set_threads", "gradc_blas_state")
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _global(module, name, ty):
    gv = module.globals.get(name)
    if gv is None:
        gv = ir.GlobalVariable(module, ty, name)
        gv.initializer = ir.Constant(ty, None if ty == PTR else 0)
    return gv


def gemm_function(module: ir.Module, dtype: str, accumulate: bool = False) -> ir.Function:
    """C[M,N] = op(A) @ op(B), row-major: (ta, tb, M, N, K, A, lda, B, ldb, C, ldc); with
    accumulate, C += op(A) @ op(B)."""
    name = f"gradc.gemm.{dtype}" + (".acc" if accumulate else "")
    if name in module.globals:
        return module.globals[name]
    t = LLTYPES[dtype]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I32, I32, I64, I64, I64, PTR, I64, PTR, I64,
                                                             PTR, I64]), name)
    fn.linkage = "internal"
    ta, tb, m, n, k, a, lda, bp, ldb, c, ldc = fn.args
    blas_ptr = _global(module, BLAS_GLOBALS[dtype], PTR)
    ilp64 = _global(module, ILP64_GLOBAL, I32)
    beta = ir.Constant(t, 1.0 if accumulate else 0.0)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    empty = b.or_(b.icmp_signed("==", m, ZERO), b.icmp_signed("==", n, ZERO))
    if accumulate:            # nothing to add
        empty = b.or_(empty, b.icmp_signed("==", k, ZERO))
    with b.if_then(empty):
        b.ret_void()
    p = b.load(blas_ptr, typ=PTR)
    # K == 0 is the zero matrix; left to the loop kernel, which writes it
    use_blas = b.and_(b.icmp_unsigned("!=", p, ir.Constant(PTR, None)), b.icmp_signed(">", k, ZERO))
    with b.if_then(use_blas):
        flag = lambda tr: b.select(b.icmp_unsigned("!=", tr, ir.Constant(I32, 0)),
                                   ir.Constant(I32, TRANS), ir.Constant(I32, NO_TRANS))
        ea, eb = flag(ta), flag(tb)
        wide = b.icmp_unsigned("!=", b.load(ilp64, typ=I32), ir.Constant(I32, 0))
        _gemv_paths(b, module, dtype, wide, ta, tb, m, n, k, a, lda, bp, ldb, c, ldc, beta)
        with b.if_else(wide) as (then, other):
            for block, it in ((then, I64), (other, I32)):
                with block:
                    conv = (lambda v: v) if it == I64 else (lambda v: b.trunc(v, I32))
                    fty = ir.FunctionType(ir.VoidType(), [I32, I32, I32, it, it, it, t, PTR, it, PTR, it,
                                                          t, PTR, it])
                    b.call(_Callee(p, fty), [ir.Constant(I32, ROW_MAJOR), ea, eb, conv(m), conv(n),
                                             conv(k), ir.Constant(t, 1.0), a, conv(lda), bp, conv(ldb),
                                             beta, c, conv(ldc)])
        b.ret_void()
    _loop_kernel(b, t, ta, tb, m, n, k, a, lda, bp, ldb, c, ldc, accumulate)
    b.ret_void()
    return fn


def _gemv_paths(b, module, dtype, wide, ta, tb, m, n, k, a, lda, bp, ldb, c, ldc, beta):
    """A product with one row or one column is a matrix-vector product: gemm would pack the
    whole matrix first (4x slower for a 4096x512 matrix), gemv streams it once."""
    t = LLTYPES[dtype]
    p = b.load(_global(module, GEMV_GLOBALS[dtype], PTR), typ=PTR)
    has = b.icmp_unsigned("!=", p, ir.Constant(PTR, None))
    on = lambda tr: b.icmp_unsigned("!=", tr, ir.Constant(I32, 0))
    flip = lambda cond: b.select(cond, ir.Constant(I32, NO_TRANS), ir.Constant(I32, TRANS))
    keep = lambda cond: b.select(cond, ir.Constant(I32, TRANS), ir.Constant(I32, NO_TRANS))
    # n == 1: C[:, 0] = op(A) @ B[:, 0]; the stored A is (m, k), or (k, m) when transposed
    col = (b.and_(has, b.icmp_signed("==", n, ONE)), keep(on(ta)),
           b.select(on(ta), k, m), b.select(on(ta), m, k), a, lda,
           bp, b.select(on(tb), ONE, ldb), ldc)
    # m == 1: C[0, :] = op(B)^T @ A[0, :]; the stored B is (k, n), or (n, k) when transposed
    row = (b.and_(has, b.icmp_signed("==", m, ONE)), flip(on(tb)),
           b.select(on(tb), n, k), b.select(on(tb), k, n), bp, ldb,
           a, b.select(on(ta), lda, ONE), ONE)
    for cond, trans, rows, cols, mat, ld, vec, inc, incy in (col, row):
        with b.if_then(cond):
            with b.if_else(wide) as (then, other):
                for block, it in ((then, I64), (other, I32)):
                    with block:
                        conv = (lambda v: v) if it == I64 else (lambda v: b.trunc(v, I32))
                        fty = ir.FunctionType(ir.VoidType(), [I32, I32, it, it, t, PTR, it, PTR, it, t,
                                                              PTR, it])
                        b.call(_Callee(p, fty), [ir.Constant(I32, ROW_MAJOR), trans, conv(rows), conv(cols),
                                                 ir.Constant(t, 1.0), mat, conv(ld), vec, conv(inc),
                                                 beta, c, conv(incy)])
            b.ret_void()


class _Callee:
    """An indirect call target with its function type (opaque pointers carry no type)."""

    def __init__(self, p, fty):
        self.p, self.function_type = p, fty
        self.type = PTR

    def get_reference(self):
        return self.p.get_reference()


def _loop_kernel(b, t, ta, tb, m, n, k, a, lda, bp, ldb, c, ldc, accumulate=False):
    """i-k-j order: the inner loop streams rows of B and C, so LLVM vectorizes it."""
    ta_on = b.icmp_unsigned("!=", ta, ir.Constant(I32, 0))
    tb_on = b.icmp_unsigned("!=", tb, ir.Constant(I32, 0))
    with counted_loop(b, m, prefix="k.") as i:
        row = b.mul(i, ldc)
        if not accumulate:
            with counted_loop(b, n, prefix="k.") as j:
                b.store(ir.Constant(t, 0.0), b.gep(c, [b.add(row, j)], source_etype=t))
        with counted_loop(b, k, prefix="k.") as kk:
            ai = b.select(ta_on, b.add(b.mul(kk, lda), i), b.add(b.mul(i, lda), kk))
            av = b.load(b.gep(a, [ai], source_etype=t), typ=t)
            with counted_loop(b, n, prefix="k.") as j:
                bi = b.select(tb_on, b.add(b.mul(j, ldb), kk), b.add(b.mul(kk, ldb), j))
                pc = b.gep(c, [b.add(row, j)], source_etype=t)
                b.store(b.fadd(b.load(pc, typ=t), b.fmul(av, b.load(b.gep(bp, [bi], source_etype=t), typ=t))), pc)
