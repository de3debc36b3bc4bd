"""Loops and branches on the CUDA targets: a structured plan run as a host-side loop of launches.

A function with loops or branches has a plan {"symbols", "program": {"values", "params",
"outputs", "steps"}} (compiler/codegen/cuda/program.py). Its steps are blocks (a plain plan run
on the program's buffers), `for`, `while` and `if`, whose bodies are plans again. The values
crossing steps live in device buffers allocated here for the call and freed when it ends; the
loop bounds, the while conditions and the if conditions are read back to the host (one scalar
each); a loop's carried state lives in two buffers that swap each iteration, and its stacked
results in one buffer per result, the body writing row t - start in place. The semantics are the
CPU driver's (compiler/codegen/cpu/driver.py) and the reference's (compiler/control.py).
"""
from __future__ import annotations

import numpy as np

from ..vocab import ITEMSIZE, NP_DTYPES


def plan_launches(plan: dict):
    """Every launch step of a plan, plain or structured, bodies included."""
    if "program" not in plan:
        yield from (s for s in plan["steps"] if "launch" in s)
        return
    for step in plan["program"]["steps"]:
        for key in ("block", "body", "cond", "then", "orelse"):
            if key in step:
                yield from plan_launches(step[key])


def run_program(fn, prog: dict, ins, outs, dims: dict, pool=None):
    """Run a program (a structured plan's "program") on (pointer, element count) buffers. The
    outermost run owns the pool of device buffers that it and the runs of its bodies share."""
    own = pool is None
    pool = pool or Pool(fn.driver)
    try:
        ProgramRun(fn, prog, dims, pool).run(ins, outs)
    finally:
        if own:
            pool.release()


class Pool:
    """Device buffers of one call: a body's run gives its buffers back when it ends, and the next
    iteration's run takes them again (in stream order: its launches come after the last ones that
    used them), so a loop allocates once, not once per iteration. All are freed when the call ends."""

    def __init__(self, drv):
        from .cuda import _Allocation
        self.drv, self._Allocation = drv, _Allocation
        self.idle = {}                        # bytes -> allocations no run holds
        self.held = []                        # every allocation, until release

    def get(self, nbytes: int):
        free = self.idle.get(nbytes)
        if free:
            return free.pop()
        mem = self._Allocation(self.drv, nbytes)
        mem.nbytes = nbytes
        self.held.append(mem)
        return mem

    def put(self, mem):
        self.idle.setdefault(mem.nbytes, []).append(mem)

    def release(self):
        if self.held:
            self.drv.synchronize()            # nothing queued may still use what is freed
        self.idle.clear()
        self.held.clear()


class ProgramRun:
    """One run of a program on given (pointer, element count) input and output buffers.

    fn is the CudaFunction: fn._run_plan(plan, ins, outs, dims, pool) runs a block or a body."""

    def __init__(self, fn, prog: dict, dims: dict, pool: Pool):
        from .cuda import size
        self.fn, self.prog, self.drv, self.pool = fn, prog, fn.driver, pool
        self._size = size
        self.dims = dict(dims)                # trip counts of this program's loops join them
        self.env = {}                         # value id -> (pointer, element count)
        self.allocs = []

    # -- buffers

    def count(self, shape) -> int:
        n = 1
        for d in shape:
            n *= self._size(d, self.dims)
        return n

    def alloc(self, shape, dtype) -> tuple:
        count = self.count(shape)
        mem = self.pool.get(count * ITEMSIZE[dtype])
        self.allocs.append(mem)
        return mem.ptr, count

    def read(self, vid, dtype=None):
        """A scalar value from the device (after the launches that make it)."""
        dtype = dtype or self.prog["values"][vid]["dtype"]
        a = np.empty((), NP_DTYPES[dtype])
        self.drv.synchronize()
        self.drv.to_host(a, self.env[vid][0])
        return a.item()

    def copy_of(self, buf, t) -> tuple:
        dst = self.alloc(t["shape"], t["dtype"])
        self.drv.copy(dst[0], buf[0], dst[1] * ITEMSIZE[t["dtype"]])
        return dst

    def bind(self, step, bufs):
        for vid, buf in zip(step["parts"], bufs):
            if vid is not None:
                self.env[vid] = buf

    # -- the program

    def run(self, ins, outs):
        prog, drv = self.prog, self.drv
        try:
            for vid, buf in zip(prog["params"], ins):
                self.env[vid] = buf
            # an output a block makes is written in place, the others are copied at the end
            made = {o for s in prog["steps"] if "block" in s for o in s["outs"]}
            direct = {}
            for i, o in enumerate(prog["outputs"]):
                if o in made and o not in direct:
                    direct[o] = i
            for step in prog["steps"]:
                if "block" in step:
                    bufs = [outs[direct[o]] if o in direct else
                            self.alloc(prog["values"][o]["shape"], prog["values"][o]["dtype"])
                            for o in step["outs"]]
                    ins = [self.env[v] for v in step["ins"]]
                    self.fn._run_plan(step["block"], ins, bufs, self.dims, self.pool)
                    for o, b in zip(step["outs"], bufs):
                        self.env[o] = b
                elif "for" in step:
                    self.run_for(step)
                elif "while" in step:
                    self.run_while(step)
                else:
                    self.run_if(step)
            for i, o in enumerate(prog["outputs"]):
                if direct.get(o) != i:
                    src, dst = self.env[o], outs[i]
                    drv.copy(dst[0], src[0], dst[1] * ITEMSIZE[prog["values"][o]["dtype"]])
        finally:
            for mem in self.allocs:
                self.pool.put(mem)
            self.allocs.clear()

    def run_for(self, step):
        f, types, drv = step["for"], step["types"], self.drv
        nc = len(f["init"])
        lo, hi = self.read(f["start"]), self.read(f["stop"])
        trips = max(hi - lo, 0)
        self.dims[f["trip"]] = trips
        cur = [self.copy_of(self.env[x], t) for x, t in zip(f["init"], types)]
        nxt = [self.alloc(t["shape"], t["dtype"]) for t in types[:nc]]
        caps = [self.env[x] for x in f["caps"]]
        stacks = [self.alloc(t["shape"], t["dtype"]) for t in types[nc:]]
        rows = [(self.count(t["shape"][1:]), ITEMSIZE[t["dtype"]]) for t in types[nc:]]
        # the indices, each the body's first input in turn: one copy to the device
        tbuf = self.alloc((trips,), "i64")
        drv.to_device(tbuf[0], np.arange(lo, lo + trips, dtype=np.int64))
        for i in range(trips):
            row = trips - 1 - i if f["reverse"] else i
            ins = [(tbuf[0] + 8 * row, 1)] + cur + caps
            outs = nxt + [(s[0] + row * n * item, n) for s, (n, item) in zip(stacks, rows)]
            self.fn._run_plan(step["body"], ins, outs, self.dims, self.pool)
            cur, nxt = nxt, cur
        self.bind(step, cur + stacks)

    def run_while(self, step):
        w, types = step["while"], step["types"]
        nc = len(w["init"])
        cur = [self.copy_of(self.env[x], t) for x, t in zip(w["init"], types)]
        nxt = [self.alloc(t["shape"], t["dtype"]) for t in types[:nc]]
        caps = [self.env[x] for x in w["caps"]]
        flag = self.alloc((), "bool")
        a = np.empty((), np.bool_)
        trips = 0
        while True:
            self.fn._run_plan(step["cond"], cur + caps, [flag], self.dims, self.pool)
            self.drv.synchronize()
            self.drv.to_host(a, flag[0])
            if not a:
                break
            self.fn._run_plan(step["body"], cur + caps, nxt, self.dims, self.pool)
            cur, nxt = nxt, cur
            trips += 1
        count = self.alloc((), "i64")
        self.drv.to_device(count[0], np.array(trips, np.int64))
        self.bind(step, cur + [count])

    def run_if(self, step):
        c = step["if"]
        outs = [self.alloc(t["shape"], t["dtype"]) for t in step["types"]]
        branch = step["then"] if self.read(c["cond"], "bool") else step["orelse"]
        self.fn._run_plan(branch, [self.env[x] for x in c["caps"]], outs, self.dims, self.pool)
        self.bind(step, outs)
