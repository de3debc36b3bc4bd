"""Kernels as one body generator over a target hook: the same body becomes NVPTX or simulator IR."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol

from llvmlite import ir

from ....vocab import ITEMSIZE as SIZES
from . import mathlib

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
# element types in memory (a bool is one byte, as NumPy keeps it) and their sizes
ELEMENT = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i32": I32, "i64": I64, "bool": I8}
SCALARS = ("f32", "f64", "i32", "i64")
AXES = {"x": 0, "y": 1, "z": 2}
REGISTERS = ("tid", "ntid", "ctaid", "nctaid")
MAX_THREADS = 1024                    # per block, on every GPU since sm_20
MAX_SHARED = 48 * 1024                # static shared memory per block; more needs dynamic shared memory
# names that PTX keeps as they are, so a kernel is found by its own name in the PTX
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Param:
    """A kernel parameter: a buffer in global memory (a pointer to dtype elements) or a scalar."""
    name: str
    dtype: str
    buffer: bool = True

    def __post_init__(self):
        kinds = ELEMENT if self.buffer else SCALARS
        if self.dtype not in kinds:
            what = "buffer" if self.buffer else "scalar"
            raise ValueError(f"kernel parameter {self.name!r}: a {what} of {self.dtype!r}; "
                             f"expected one of {', '.join(kinds)}")


@dataclass(frozen=True)
class Kernel:
    """One kernel: its name, parameters, and the generator that emits its body through a KernelBuilder."""
    name: str
    params: tuple
    body: Callable = field(compare=False)

    def __post_init__(self):
        if not IDENTIFIER.fullmatch(self.name) or self.name.startswith("__"):
            # PTX keeps such a name as it is; libdevice's own names start with __
            raise ValueError(f"kernel name {self.name!r}: letters, digits and _ only, not first a digit, "
                             f"not first two _")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"kernel {self.name!r}: parameter names repeat: {names}")


@dataclass(frozen=True)
class Buf:
    """A memory array the body loads from and stores to: a global buffer or a shared array."""
    name: str
    dtype: str
    ptr: ir.Value
    space: str                        # "global" or "shared"
    number: int                       # the parameter's index, or the shared array's
    count: int | None = None          # elements of a shared array (a global's come at launch)

    @property
    def type(self) -> ir.Type:
        return ELEMENT[self.dtype]


@dataclass(frozen=True)
class Shared:
    """A shared-memory array of a kernel: per block, at a byte offset of the block's shared space."""
    name: str
    dtype: str
    count: int
    offset: int


@dataclass
class KernelInfo:
    """What a launcher needs besides the code: parameters, barrier names, shared memory."""
    name: str
    params: tuple
    barriers: list = field(default_factory=list)     # barrier i + 1 is barriers[i]
    shared: list = field(default_factory=list)

    @property
    def shared_bytes(self) -> int:
        return max((s.offset + s.count * SIZES[s.dtype] for s in self.shared), default=0)

    def to_json(self) -> dict:
        """What a module file keeps of the kernel (from_json reads it back)."""
        return {"name": self.name, "params": [[p.name, p.dtype, p.buffer] for p in self.params],
                "barriers": list(self.barriers),
                "shared": [[s.name, s.dtype, s.count, s.offset] for s in self.shared]}

    @classmethod
    def from_json(cls, d: dict) -> "KernelInfo":
        return cls(str(d["name"]), tuple(Param(str(n), str(t), bool(b)) for n, t, b in d["params"]),
                   [str(x) for x in d["barriers"]],
                   [Shared(str(n), str(t), int(c), int(o)) for n, t, c, o in d["shared"]])


class Target(Protocol):
    """A target hook: what a KernelBuilder asks of CudaTarget (nvptx.py) and SimTarget (simtarget.py)."""

    name: str

    def prepare(self, module: ir.Module) -> None: ...               # once per module
    def declare(self, kb: KernelBuilder) -> ir.Function: ...         # the kernel's function
    def start(self, kb: KernelBuilder) -> dict: ...                  # entry code; {name: Buf | value}
    def finish(self, kb: KernelBuilder) -> None: ...                 # at kb.exit: end the kernel
    def index(self, kb: KernelBuilder, register: str, axis: int) -> ir.Value: ...
    def barrier(self, kb: KernelBuilder, ident: int) -> None: ...    # ident: 1, 2, ... per kernel
    def shared(self, kb: KernelBuilder, s: Shared) -> ir.Value: ...  # its first element's address
    def math(self, kb: KernelBuilder, name: str, args: list) -> ir.Value: ...
    def load(self, kb: KernelBuilder, buf: Buf, index: ir.Value) -> ir.Value: ...
    def store(self, kb: KernelBuilder, buf: Buf, index: ir.Value, value: ir.Value) -> None: ...
    def atomic_add(self, kb: KernelBuilder, buf: Buf, index: ir.Value, value: ir.Value) -> None: ...


class KernelBuilder:
    """What a body generator sees: the IRBuilder `b`, the arguments, and the target's primitives.

    Thread indices, barriers, shared arrays, math and every load or store of a Buf go through
    the target hook; arithmetic, control flow and index computations are plain `b` calls and
    are the same instructions for every target.
    """

    def __init__(self, target: Target, module: ir.Module, kernel: Kernel):
        self.target, self.module, self.kernel = target, module, kernel
        self.info = KernelInfo(kernel.name, kernel.params)
        self.state = None                 # the target's own per-kernel values
        self.fn = target.declare(self)
        self.entry = self.fn.append_basic_block("entry")
        self.b = ir.IRBuilder(self.entry)
        self.args = target.start(self)
        self.exit = self.fn.append_basic_block("exit")
        body = self.fn.append_basic_block("body")
        self.b.branch(body)
        self.b.position_at_end(body)

    def build(self) -> KernelInfo:
        self.kernel.body(self)
        if not self.b.block.is_terminated:
            self.b.branch(self.exit)
        self.b.position_at_end(self.exit)
        self.target.finish(self)
        return self.info

    def arg(self, name: str):
        """A parameter: a Buf for a buffer, an LLVM value for a scalar."""
        try:
            return self.args[name]
        except KeyError:
            raise KeyError(f"kernel {self.kernel.name!r} has no parameter {name!r}") from None

    # ---- the target's primitives

    def index(self, register: str, axis: str = "x") -> ir.Value:
        """tid, ntid, ctaid or nctaid along x, y or z, as i32 (PTX's special registers)."""
        if register not in REGISTERS or axis not in AXES:
            raise ValueError(f"no index register {register}.{axis}")
        return self.target.index(self, register, AXES[axis])

    def tid(self, axis="x"):
        return self.index("tid", axis)

    def ntid(self, axis="x"):
        return self.index("ntid", axis)

    def ctaid(self, axis="x"):
        return self.index("ctaid", axis)

    def nctaid(self, axis="x"):
        return self.index("nctaid", axis)

    def barrier(self, name: str | None = None):
        """__syncthreads(): every thread of the block must reach this same barrier."""
        self.info.barriers.append(name or f"barrier {len(self.info.barriers) + 1}")
        self.target.barrier(self, len(self.info.barriers))

    def shared(self, name: str, dtype: str, count: int) -> Buf:
        """A per-block shared array of count elements (aligned to 16 bytes)."""
        if dtype not in ELEMENT or count <= 0 or not IDENTIFIER.fullmatch(name):
            raise ValueError(f"shared array {name!r}: {count} elements of {dtype!r}")
        offset = (self.info.shared_bytes + 15) // 16 * 16
        if offset + count * SIZES[dtype] > MAX_SHARED:
            raise ValueError(f"kernel {self.kernel.name!r}: shared array {name!r} takes the block's shared "
                             f"memory past {MAX_SHARED} bytes")
        self.info.shared.append(Shared(name, dtype, count, offset))
        ptr = self.target.shared(self, self.info.shared[-1])
        return Buf(name, dtype, ptr, "shared", len(self.info.shared) - 1, count)

    def math(self, name: str, *args) -> ir.Value:
        """A math function by name (mathlib.FUNCTIONS) on f32 or f64 values."""
        mathlib.check(name, args)
        return self.target.math(self, name, list(args))

    def load(self, buf: Buf, index) -> ir.Value:
        return self.target.load(self, buf, self.i64(index))

    def store(self, buf: Buf, index, value: ir.Value):
        if value.type != buf.type:
            raise TypeError(f"store of {value.type} into {buf.name} of {buf.dtype}")
        self.target.store(self, buf, self.i64(index), value)

    def atomic_add(self, buf: Buf, index, value: ir.Value):
        """buf[index] += value as one atomic read-modify-write (atomicAdd)."""
        if value.type != buf.type or buf.dtype == "bool":
            raise TypeError(f"atomic add of {value.type} into {buf.name} of {buf.dtype}")
        self.target.atomic_add(self, buf, self.i64(index), value)

    def ret(self):
        """Return from the kernel here; code after it in the same block is unreachable."""
        self.b.branch(self.exit)
        self.b.position_at_end(self.fn.append_basic_block("after.ret"))

    # ---- helpers built from the primitives: the same IR for every target

    def i64(self, v) -> ir.Value:
        if isinstance(v, int):
            return ir.Constant(I64, v)
        if v.type == I64:
            return v
        return self.b.sext(v, I64) if v.type.width > 1 else self.b.zext(v, I64)

    def global_id(self, axis="x") -> ir.Value:
        """ctaid * ntid + tid, in 64 bits: grids of more than 2**31 threads index correctly."""
        b = self.b
        base = b.mul(b.zext(self.ctaid(axis), I64), b.zext(self.ntid(axis), I64))
        return b.add(base, b.zext(self.tid(axis), I64))

    def grid_size(self, axis="x") -> ir.Value:
        b = self.b
        return b.mul(b.zext(self.ntid(axis), I64), b.zext(self.nctaid(axis), I64))

    def local(self, type_: ir.Type, init: ir.Value | None = None) -> ir.Value:
        """A per-thread variable (an alloca in the entry block; LLVM keeps it in registers)."""
        with self.b.goto_block(self.entry):
            slot = self.b.alloca(type_)
        if init is not None:
            self.b.store(init, slot)
        return slot

    def loop(self, start, stop, step=1):
        """for (i = start; i < stop; i += step) with i64 i, yielded to the with-block."""
        return loop(self.b, self.i64(start), self.i64(stop), self.i64(step))

    def grid_stride(self, n, axis="x"):
        """for (i = global_id; i < n; i += grid_size): any grid covers any n."""
        return self.loop(self.global_id(axis), n, self.grid_size(axis))

    @contextmanager
    def if_then(self, cond: ir.Value):
        with self.b.if_then(cond):
            yield


@contextmanager
def loop(b: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: ir.Value):
    """for (i = start; i < stop; i += step) over i64 values, its index yielded to the with-block."""
    fn = b.function
    pre = b.block
    head = fn.append_basic_block("loop")
    body = fn.append_basic_block("loop.body")
    end = fn.append_basic_block("loop.end")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name="i")
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, stop), body, end)
    b.position_at_end(body)
    yield i
    # from the block that ends the body, which barriers or branches inside it may have changed
    i.add_incoming(b.add(i, step), b.block)
    b.branch(head)
    b.position_at_end(end)


def build_module(kernels, target: Target, name: str = "kernels") -> tuple:
    """(ir.Module, {kernel name: KernelInfo}) of kernels built with a target hook."""
    module = ir.Module(name=name)
    target.prepare(module)
    infos = {}
    for k in kernels:
        if k.name in infos:
            raise ValueError(f"two kernels named {k.name!r}")
        infos[k.name] = KernelBuilder(target, module, k).build()
    return module, infos
