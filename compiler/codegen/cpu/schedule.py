"""Parallel schedule: roots grouped into phases (a barrier between two) and regions, and the arena."""
from __future__ import annotations

from dataclasses import dataclass

from ...ops import OPS
from .conv import same_columns
from .function import SCANS
from .reduce import inner, needs_scratch, reduce_mode


@dataclass
class Step:
    """One loop nest: a root computed into its buffer, or an output copied into its out slot."""
    node: object                  # the root Node; None for a copy
    value: object                 # the value the step writes
    out: int | None = None        # a copy: the output's position
    partials: bool = False        # threads reduce into partial results that a second phase combines
    chunk: object = None          # plan.Chunk: a convolution's product image by image (conv.py)

    @property
    def matmul(self) -> bool:
        return self.chunk is not None or (self.node is not None and OPS[self.node.op].kind == "matmul")

    @property
    def product_node(self):
        """The matmul node whose multiply-adds the step does."""
        return self.chunk.mm if self.chunk is not None else self.node

    @property
    def alone(self) -> bool:
        """A scatter (threads would race on repeated indices): a phase of its own, outside any
        parallel region. A matrix product runs inside one, its rows (or columns, or batches)
        shared among the threads (function.py, matmul)."""
        return self.node is not None and OPS[self.node.op].kind == "scatter"

    @property
    def space(self) -> tuple:
        """The shape whose iterations the step runs (its work, for the parallel threshold)."""
        if self.node is not None and OPS[self.node.op].kind == "reduce":
            return self.node.ins[0].shape
        return self.value.shape


@dataclass
class Schedule:
    phases: list       # [(steps, part)]: steps sharing a loop nest; part 1 combines partials
    segments: list     # [(parallel, [phase index])]: a matmul phase runs alone, outside any region
    storage: dict      # value -> output position it is computed into
    slots: list        # [[arena key]]: keys whose lifetimes do not overlap share one block
    slot_of: dict      # arena key -> slot; keys: temp values, ("partial", node), ("acc", node)
    checks: dict       # segment index (-1: before the first) -> check nodes the entry tests after it


def make_schedule(g, plan) -> Schedule:
    storage = {}
    for i, v in enumerate(g.outputs):
        v = plan.aliases.get(v, v)           # a reshaped root is written into the output itself
        if v not in g.params and v not in storage:
            storage[v] = i
    steps = [Step(n, n.out, partials=OPS[n.op].kind == "reduce" and reduce_mode(n)[0] == "partials")
             if n not in plan.chunked else Step(n, n.out, partials=plan.chunked[n].kind == "dw",
                                                chunk=plan.chunked[n])
             for n in plan.roots]
    steps += [Step(None, v, out=i) for i, v in enumerate(g.outputs) if storage.get(plan.aliases.get(v, v)) != i]

    phases, segments, written, first = [], [], {}, 0
    placed = []                                   # (step, phase of part 0)

    def close():
        if first < len(phases):
            segments.append((True, list(range(first, len(phases)))))

    # a value under a check is tested between regions: what reads it starts a new region
    checked = {n.ins[0] for n in g.nodes if OPS[n.op].kind == "check"}
    for unit in _units(plan, steps):
        own = {s.value for s in unit if s.node is not None}
        reads = set().union(*(_reads(plan, s) for s in unit)) - own
        if first < len(phases) and any(written.get(r, -1) >= first for r in reads & checked):
            close()
            first = len(phases)
        s = unit[0]
        if s.alone:
            close()
            phases.append([(s, 0)])
            segments.append((False, [len(phases) - 1]))
            written[s.value] = len(phases) - 1
            placed.append((s, len(phases) - 1))
            first = len(phases)
            continue
        # the earliest phase after everything it reads was written in this region; the roots
        # of one nest read each other element by element, in the same iteration
        p = max([first] + [written[r] + 1 for r in reads if written.get(r, -1) >= first])
        for s in unit:
            for q in range(p, p + 1 + s.partials):
                if q == len(phases):
                    phases.append([])
                phases[q].append((s, q - p))
            written[s.value] = p + s.partials
            placed.append((s, p))
    close()
    phases = [_fuse(p) for p in phases]
    segment_of = {i: r for r, (_, idxs) in enumerate(segments) for i in idxs}
    checks = {}
    for n in g.nodes:
        if OPS[n.op].kind == "check":
            x = n.ins[0]
            checks.setdefault(segment_of[written[x]] if x in written else -1, []).append(n)

    # lifetimes in phases: a block may be reused once every thread is past a barrier
    life = {}
    tiled = {v: k for k, t in plan.tiles.items() for v in t.values}
    for s, p in placed:
        if s.value in tiled:
            life[("tile", tiled[s.value])] = [p, p]   # one scratch block for the nest's tiles
        elif s.node is not None and s.value not in storage and s.value not in g.params:
            life[s.value] = [p, p]
        if s.partials:
            life[("partial", s.node)] = [p, p + 1]
        if s.node is not None and OPS[s.node.op].kind == "reduce" and needs_scratch(s.node):
            life[("acc", s.node)] = [p, p]
        if s.chunk is not None:
            life[("chunk", s.node)] = [p, p]
    for s, p in placed:
        for r in _reads(plan, s):
            if r in life:
                life[r][1] = max(life[r][1], p)
    slots, ends, slot_of = [], [], {}
    for key in sorted(life, key=lambda k: life[k][0]):
        a, b = life[key]
        free = [i for i, e in enumerate(ends) if e < a]
        if free:
            i = free[0]
        else:
            i = len(slots)
            slots.append([])
            ends.append(-1)
        slots[i].append(key)
        ends[i] = b
        slot_of[key] = i
    return Schedule(phases, segments, storage, slots, slot_of, checks)


def _fuse(phase):
    """Group the phase's steps that loop over the same shape: nothing in a phase depends on another."""
    groups, by_space = [], {}
    for s, part in phase:
        kind = OPS[s.node.op].kind if s.node is not None else None
        scan = s.node is not None and s.node.op in SCANS
        if part == 0 and s.chunk is None and not scan and (kind not in ("reduce", "matmul") or
                                                           (kind == "reduce" and inner(s.node))):
            if s.space in by_space:
                by_space[s.space].append(s)
                continue
            by_space[s.space] = [s]
            groups.append((by_space[s.space], 0))
        elif part == 0 and s.chunk is not None:
            # a convolution's products over the same columns share one pass over the images
            mate = next((g for g, q in groups if q == 0 and g[0].chunk is not None and
                         same_columns(g[0].chunk, s.chunk)), None)
            if mate is not None:
                mate.append(s)
            else:
                groups.append(([s], part))
        else:
            groups.append(([s], part))
    return [(tuple(g), part) for g, part in groups]


def _units(plan, steps):
    """The steps in groups placed together: the roots of one nest key (plan.keys), each other
    step alone; by level, so that everything a group reads is placed before it."""
    groups, order = {}, []
    for i, s in enumerate(steps):
        key = plan.keys.get(s.value) if s.node is not None else None
        if key is None or key[0] != "nest":
            key = ("one", i)
        key = key[:3]                             # a nest's segments go together
        if key not in groups:
            groups[key] = []
            level = plan.levels.get(s.value, 0) if s.node is not None else float("inf")
            order.append((level, i, key))
        groups[key].append(s)
    return [groups[k] for _, _, k in sorted(order)]


def _reads(plan, s):
    if s.node is not None:
        return plan.reads[s.value]
    return {s.value} if s.value in plan.buffers else plan.reads.get(("out", s.value), set())
