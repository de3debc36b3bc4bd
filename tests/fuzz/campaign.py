"""A fuzzing campaign: N sources (property 1) and M programs (property 2) in worker processes.

    python -m tests.fuzz.campaign --sources 100000 --programs 10000 --seed 1 --out /tmp/fuzz
    python tests/fuzz/campaign.py --sources 2000 --programs 50

Each case runs in a worker process, so a case that crashes the interpreter (a segfault, an
LLVM abort) or hangs is counted as such and the campaign goes on. Every outcome is counted
and printed as a table; the first case of every failure kind is shrunk to a minimal program
and written to --out with the command that reproduces it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

if __package__ in (None, ""):           # run as a file: import as the package it belongs to
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.fuzz"

from . import gen, mutate, props, shrink  # noqa: E402

ORIGINS = ("generated", "sample, token mutations", "sample, byte mutations",
           "generated, token mutations", "generated, byte mutations", "hostile inputs")
_CORPUS = []


def source_case(seed: int):
    """(origin, source) of property-1 case seed: a str, or bytes for byte mutations."""
    if not _CORPUS:
        _CORPUS.extend(mutate.corpus())
    rng = random.Random(seed)
    if rng.random() < 0.05:
        base = rng.choice(_CORPUS) if rng.random() < 0.5 else gen.source([gen.generate(seed)])
        return ORIGINS[5], mutate.mutate(base, rng, "hostile")
    r = rng.random()
    if r < 0.15:
        return ORIGINS[0], gen.source([gen.generate(seed)])
    if r < 0.45:
        return ORIGINS[1], mutate.mutate(rng.choice(_CORPUS), rng, "tokens")
    if r < 0.65:
        return ORIGINS[2], mutate.mutate(rng.choice(_CORPUS), rng, "bytes")
    base = gen.source([gen.generate(seed)])
    if r < 0.9:
        return ORIGINS[3], mutate.mutate(base, rng, "tokens")
    return ORIGINS[4], mutate.mutate(base, rng, "bytes")


def source_outcome(origin, src) -> tuple[str, str]:
    kind, detail = props.check_source(src)
    if origin == ORIGINS[0] and kind == props.COMPILE_ERROR:
        return "generated program rejected (CompileError)", ""
    return kind, detail


def work(task):
    """What a worker does with one task (see Pool)."""
    what = task[0]
    if what == "source":                       # ("source", seed)
        origin, src = source_case(task[1])
        return (origin,) + source_outcome(origin, src)
    if what == "text":                         # ("text", origin, src): for the shrinker
        return source_outcome(task[1], task[2])
    if what == "program":                      # ("program", seed)
        prog = gen.generate(task[1])
        fails, skipped = props.check_programs([prog], task[1])
        return prog.dtype, [(k, d) for k, d, _ in fails], skipped
    if what == "tree":                         # ("tree", program, seed): for the shrinker
        fails, _ = props.check_programs([task[1]], task[2])
        return [(k, d) for k, d, _ in fails]
    if what == "signal":                       # the tests' stand-ins for a crash and a hang
        import faulthandler
        faulthandler.disable()                 # pytest's handler would print the stack
        os.kill(os.getpid(), task[1])
    if what == "sleep":
        time.sleep(task[1])
    raise ValueError(what)


# ---- worker processes that may crash

def _serve(conn, opt):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opt != 3:
        # native code at another -O level: a campaign trades LLVM's depth for throughput
        import functools
        from gradc.compiler import codegen
        codegen.compile_graphs = functools.partial(codegen.compile_graphs, opt=opt)
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(work(task))


class Pool:
    """Worker processes fed one task at a time; a dead or stuck worker is replaced.

    Workers are also replaced every `recycle` tasks: each compiled module maps native code
    that a long-lived process does not give back, and would end in an LLVM abort.
    """

    def __init__(self, n: int, opt: int = 3, timeout: float = 300, recycle: int = 150):
        self.ctx = mp.get_context("fork")
        self.opt, self.timeout, self.recycle = opt, timeout, recycle
        self.slots = [self._start() for _ in range(n)]

    def _start(self):
        here, there = self.ctx.Pipe()
        p = self.ctx.Process(target=_serve, args=(there, self.opt), daemon=True)
        p.start()
        there.close()
        return {"proc": p, "conn": here, "task": None, "t0": 0.0, "done": 0}

    def _restart(self, s):
        s["conn"].close()
        if s["proc"].is_alive():
            s["proc"].kill()
        s["proc"].join()
        s.update(self._start())

    def run(self, tasks):
        """Yield (task, status, result): status "ok", "crash (SIGSEGV)" and the like, or "timeout"."""
        tasks = iter(tasks)
        pending = True
        while True:
            for s in self.slots:
                if s["task"] is None and pending:
                    t = next(tasks, None)
                    if t is None:
                        pending = False
                        break
                    s["task"], s["t0"] = t, time.monotonic()
                    s["conn"].send(t)
            busy = [s for s in self.slots if s["task"] is not None]
            if not busy:
                return
            ready = wait([s["conn"] for s in busy], timeout=1.0)
            for s in busy:
                t = s["task"]
                if s["conn"] in ready:
                    try:
                        res = s["conn"].recv()
                    except (EOFError, OSError):
                        s["proc"].join()
                        code = s["proc"].exitcode
                        name = signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
                        s["task"] = None
                        self._restart(s)
                        yield t, f"crash ({name})", None
                        continue
                    s["task"], s["done"] = None, s["done"] + 1
                    if s["done"] >= self.recycle:
                        s["conn"].send(None)
                        self._restart(s)
                    yield t, "ok", res
                elif time.monotonic() - s["t0"] > self.timeout:
                    s["task"] = None
                    self._restart(s)
                    yield t, "timeout", None

    def call(self, task):
        """(status, result) of one task, on the first worker."""
        for _, status, res in self.run([task]):
            return status, res

    def close(self):
        for s in self.slots:
            if s["proc"].is_alive():
                s["conn"].send(None)
            s["proc"].join(5)
            if s["proc"].is_alive():
                s["proc"].kill()


# ---- the campaign

class Tally:
    """Counts per (row, outcome), and each failure kind's count and first case."""

    def __init__(self):
        self.counts, self.first, self.kinds = Counter(), {}, Counter()

    def add(self, row, outcome, case=None, detail="", failure=True):
        self.counts[row, outcome] += 1
        if failure:
            self.kinds[outcome] += 1
            self.first.setdefault(outcome, (case, detail, row))


def run_sources(pool, n, seed, out, tally, log, deadline=float("inf")):
    t0 = time.monotonic()
    for i, (task, status, res) in enumerate(pool.run(_until(n, seed, "source", deadline))):
        if status != "ok":
            origin = source_case(task[1])[0]
            tally.add(origin, status, task[1])
        else:
            origin, kind, detail = res
            tally.add(origin, kind, task[1], detail, failure=kind not in (props.OK, props.COMPILE_ERROR))
        if (i + 1) % 2000 == 0:
            log(f"sources: {i + 1}/{n} in {time.monotonic() - t0:.0f} s, failures so far: {dict(tally.kinds)}")


def _until(n, seed, what, deadline):
    """Tasks for cases seed .. seed + n - 1, none after the deadline or a SIGTERM."""
    for k in range(n):
        if time.monotonic() > deadline or STOP:
            return
        yield what, seed + k


STOP = []


def run_programs(pool, n, seed, out, tally, log, deadline=float("inf")):
    t0 = time.monotonic()
    skipped = 0
    for i, (task, status, res) in enumerate(pool.run(_until(n, seed, "program", deadline))):
        if status != "ok":
            tally.add("programs", status, task[1])
            continue
        dtype, fails, sk = res
        skipped += sk
        tally.add("programs", "checked", failure=False)
        tally.add(f"programs ({dtype})", "checked", failure=False)
        if not fails:
            tally.add(f"programs ({dtype})", "all equal", failure=False)
        for kind in dict.fromkeys(k for k, _ in fails):
            tally.add(f"programs ({dtype})", kind, task[1], next(d for k, d in fails if k == kind))
        if (i + 1) % 200 == 0:
            log(f"programs: {i + 1}/{n} in {time.monotonic() - t0:.0f} s, failures so far: {dict(tally.kinds)}")
    tally.counts["programs", "difference checks skipped (kink within a step)"] = skipped


def table(tally) -> str:
    rows = sorted({r for r, _ in tally.counts})
    lines = []
    for r in rows:
        cells = sorted(((o, c) for (rr, o), c in tally.counts.items() if rr == r), key=lambda x: -x[1])
        lines.append(f"{r}")
        lines += [f"    {c:>8}  {o}" for o, c in cells]
    return "\n".join(lines)


def _slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")[:60]


def shrink_failures(pool, tally, out: Path, budget, log):
    """The first case of every failure kind, shrunk, written to out; returns the files."""
    written = []
    for n, (kind, (case, detail, row)) in enumerate(sorted(tally.first.items())):
        if case is None:
            continue
        if row.startswith("programs"):
            prog = gen.generate(case)

            def fails(p, kind=kind):
                status, res = pool.call(("tree", p, case))
                return status == kind if status != "ok" else any(k == kind for k, _ in res)
            small = shrink.shrink_program(prog, fails, budget) if budget else prog
            src = gen.source([small])
            header = (f"# property 2: {kind}\n# program seed {case} (inputs from seed {case * 1000}), "
                      f"shrunk from {shrink.size(prog)} to {shrink.size(small)} nodes\n"
                      f"# first seen: {detail[:300]}\n")
            data = (header + "".join("# " + line + "\n" for line in detail.splitlines()[1:4]) + src).encode()
        else:
            origin, src = source_case(case)

            def fails(s, kind=kind, origin=origin):
                status, res = pool.call(("text", origin, s))
                return status == kind if status != "ok" else res[0] == kind
            small = shrink.shrink_text(src, fails, budget) if budget else src
            header = (f"# property 1: {kind}\n# {origin}, case seed {case}\n"
                      f"# first seen: {detail[:300]!r}\n").encode()
            data = header + (small if isinstance(small, bytes) else small.encode())
        path = out / f"{'p2' if row.startswith('programs') else 'p1'}-{n:02d}-{_slug(kind)}.ad"
        path.write_bytes(data)
        written.append(str(path))
        log(f"shrunk {kind!r} -> {path}")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=1000, help="property-1 cases")
    ap.add_argument("--programs", type=int, default=100, help="property-2 programs")
    ap.add_argument("--seed", type=int, default=0, help="first case seed (cases are seed, seed+1, ...)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--opt", type=int, default=3, choices=(0, 1, 2, 3),
                    help="LLVM optimization level of property-2 native code (3: what users get)")
    ap.add_argument("--out", default="fuzz-out", help="folder for shrunk failures and summary.json")
    ap.add_argument("--shrink-budget", type=int, default=200, help="checks per shrink (0: no shrinking)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before a case counts as a hang")
    ap.add_argument("--minutes", type=float, default=None,
                    help="stop starting cases after this long (as on SIGTERM), then report what ran")
    a = ap.parse_args(argv)
    deadline = time.monotonic() + 60 * a.minutes if a.minutes else float("inf")
    signal.signal(signal.SIGTERM, lambda *_: STOP.append(1))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADC_CACHE_DIR", str(out / "cache"))

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    tally = Tally()
    pool = Pool(a.workers, a.opt, a.timeout)
    t0 = time.monotonic()
    try:
        if a.sources:
            run_sources(pool, a.sources, a.seed, out, tally, log, deadline)
            log(f"{sum(c for (r, o), c in tally.counts.items() if not r.startswith('programs'))} "
                f"sources in {time.monotonic() - t0:.0f} s")
        t1 = time.monotonic()
        if a.programs:
            run_programs(pool, a.programs, a.seed, out, tally, log, deadline)
            log(f"{tally.counts['programs', 'checked']} programs in {time.monotonic() - t1:.0f} s")
        print(table(tally), flush=True)
        files = shrink_failures(pool, tally, out, a.shrink_budget, log)
    finally:
        pool.close()
    summary = {"args": vars(a), "seconds": round(time.monotonic() - t0),
               "counts": [[r, o, c] for (r, o), c in sorted(tally.counts.items())],
               "failures": {k: {"count": tally.kinds[k], "first_case": v[0], "row": v[2], "detail": v[1]}
                            for k, v in tally.first.items()},
               "shrunk": files}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"failure kinds: {len(tally.kinds)}; shrunk cases in {out}", flush=True)
    return 1 if tally.kinds else 0


if __name__ == "__main__":
    sys.exit(main())
