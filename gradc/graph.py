"""`gradc graph`: a function's graph as Graphviz DOT (or SVG, PNG), optimized and fused as compiled."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .compiler.codegen.plan import make_plan
from .compiler.ir import format_attr, format_node
from .compiler.ops import OPS
from .compiler.pipeline import optimize

FORWARD, DERIVATIVE = "#a8dadc", "#ffd6a5"
WRT, LEAF = "#f4a261", "#dddddd"
INDEX_MAPS = ("reshape", "broadcast_to")  # index maps inside a fused loop: left out of labels
LINE = 24                                 # characters of op names per label line

PASS_NAMES = {"grad": "backward", "value_and_grad": "backward", "vjp": "backward", "jvp": "tangents"}


def to_dot(mod, name, optimized=True) -> str:
    """The graph of mod's function `name`: by default the optimized graph the backend compiles,
    each fused loop one node; optimized=False draws every node of the graph before optimization."""
    g = mod.graphs[name]
    kind, base, wrt = mod.derived.get(name, (None, g, ()))
    if optimized:
        g, base = optimize(g), optimize(base)
    view = _View(g, base, kind, wrt)
    title = name + (f" = {kind}({base.name}, wrt=({', '.join(wrt)}))" if kind else "")
    lines = [f'digraph "{name}" {{', f'  label="{_esc(title)}"; labelloc=t; fontname="Helvetica";',
             "  rankdir=TB; nodesep=0.15; ranksep=0.3;",
             '  node [fontname="Helvetica", fontsize=10, style=filled, margin="0.06,0.03", height=0.3];',
             '  edge [arrowsize=0.6];']
    lines += view.params(compact=optimized)
    parts = _fused(g) if optimized else [_Part([n]) for n in g.nodes]
    lines += view.parts(parts, optimized)
    lines.append("}")
    return "\n".join(lines)


class _View:
    """What the picture says about values: names, roles, forward or derivative, outputs."""

    def __init__(self, g, base, kind, wrt):
        self.g, self.kind = g, kind
        self.forward = _forward_values(g, base) if kind else {n.out for n in g.nodes}
        self.lets = {}
        for k, v in g.names:
            self.lets.setdefault(v, k)
        named = list(zip(g.param_names, g.params)) + list(g.names)
        self.wrt = {v for k, v in named if k in wrt}
        self.base_params = set(base.params) if kind else set(g.params)
        self.num = {v: i for i, v in enumerate(g.params + tuple(n.out for n in g.nodes))}
        self.producer = {n.out: n for n in g.nodes}
        self.out_names = _output_names(g, kind, wrt)
        self.base_name = base.name

    def ref(self, v) -> str:
        return f"p{self.g.params.index(v)}" if v not in self.producer else f"v{self.num[v]}"

    def params(self, compact) -> list:
        """Parameters as boxes in one row, in their order: leaves, seeds or tangents."""
        lines = []
        for pname, p in zip(self.g.param_names, self.g.params):
            requires = p in self.wrt
            role = "leaf" if p in self.base_params else "seed" if self.kind != "jvp" else "tangent"
            if compact:
                label = f"{pname}: {p.type.replace(', ', ',')}\n{role}" + (", requires grad" if requires else "")
            else:
                label = f"{pname}: {p.type}\n{role}" + ("\n(requires grad)" if requires else "")
            # a function may return a parameter as it is (the gradient of x * y is y)
            outs = self.out_names.get(p, [])
            label += "".join(f"\n= {nm}" for nm in outs)
            extra = ", peripheries=2" if outs else ""
            lines.append(f'  {self.ref(p)} [shape=box, fillcolor="{WRT if requires else LEAF}"{extra}, '
                         f'label="{_esc(label)}"];')
        ids = [self.ref(p) for p in self.g.params]
        if len(ids) > 1:
            lines.append(f"  {{rank=source; {'; '.join(ids)}}}")
            lines.append(f"  {' -> '.join(ids)} [style=invis];")
        return lines

    def parts(self, parts, optimized) -> list:
        """A node per part, each in the forward or the derivative cluster, and the edges."""
        where = {n.out: part for part in parts for n in part.nodes}
        clusters = {True: [], False: []}
        edges = []
        for part in parts:
            ident = self.ref(_last(part).out)
            fwd = _last(part).out in self.forward
            clusters[fwd or not self.kind].append(self._node(ident, part, fwd, optimized))
            sources = []
            for n in part.nodes:
                if n.out in part.hidden or n.op == "numel":      # numel reads only a shape
                    continue
                for x in n.ins:
                    if x not in where:
                        sources.append(self.ref(x))
                    elif where[x] is not part and x not in where[x].hidden:
                        sources.append(self.ref(_last(where[x]).out))
            edges += [f"  {src} -> {ident};" for src in dict.fromkeys(sources)]
        if not self.kind:
            return clusters[True] + edges
        lines = []
        derivative = PASS_NAMES.get(self.kind, "derivative")
        for fwd, label in ((True, f"forward: {self.base_name}"), (False, derivative)):
            lines.append(f"  subgraph cluster_{'forward' if fwd else 'derivative'} {{")
            lines.append(f'    label="{label}"; fontsize=11; style="rounded,filled"; color="#999999"; '
                         f'fillcolor="{"#eef7f8" if fwd else "#fff6ea"}";')
            lines += ["  " + x for x in clusters[fwd]]
            lines.append("  }")
        return lines + edges

    def _node(self, ident, part, fwd, optimized) -> str:
        last = _last(part)
        shown = [n for n in part.nodes if n.out not in part.hidden]
        if optimized:
            ops = [n for n in shown if n.op not in INDEX_MAPS] or shown
            text = _wrap([n.op if n.op != "const" else format_attr(n.attr("value")) for n in ops])
        else:
            attrs = [f"{k}={format_attr(v)}" for k, v in last.attrs if k not in ("dtype", "shape", "data")]
            text = format_attr(last.attr("value")) if last.op == "const" else \
                last.op + (f"\n{', '.join(attrs)}" if attrs else "")
        head = [", ".join(self.out_names[n.out]) for n in shown if n.out in self.out_names]
        # a forward value a derivative loop computes again is named as such
        head += [self.lets[n.out] + (" (retain_grad)" if n.out in self.wrt else
                                     " (recomputed)" if n.out in self.forward and not fwd else "")
                 for n in shown if n.out in self.lets]
        label = "\n".join(head[-2:] + [text, last.out.type.replace(", ", ",")])
        fill = WRT if any(n.out in self.wrt for n in shown) else FORWARD if fwd else DERIVATIVE
        style = "filled" + (",rounded" if optimized else "") + (",dashed" if part.shared else "")
        shape = "box" if optimized or last.op == "const" else "ellipse"
        extra = ", peripheries=2" if last.out in self.out_names else ""
        return (f'  {ident} [shape={shape}, style="{style}", fillcolor="{fill}"{extra}, '
                f'label="{_esc(label)}", tooltip="{_esc(self._tooltip(part))}"];')

    def _tooltip(self, part) -> str:
        """The IR lines of the part and the constants it reads, numbered as `--emit opt-ir` does."""
        consts = [self.producer[x] for n in part.nodes for x in n.ins
                  if x in self.producer and self.producer[x].op == "const"]
        lines = [format_node(n, self.num).split("  # ")[0] for n in consts + part.nodes]
        return "\n".join(dict.fromkeys(lines))


@dataclass
class _Part:
    """Graph nodes drawn as one picture node, in topological order."""
    nodes: list = field(default_factory=list)
    shared: bool = False        # values that several loops each compute again: drawn dashed
    hidden: set = field(default_factory=set)   # values no loop computes: only numel reads their shape


def _fused(g) -> list:
    """The optimized graph's nodes in parts: a loop the CPU backend runs with the values only it
    computes inline, and chains of cheap values that several loops compute again. Constants and
    values whose shape alone is read go to their consumer's part, to its tooltip, not its label."""
    plan = make_plan(g)
    prod = {n.out: n for n in g.nodes}
    owners = {}                              # value -> the roots whose loops compute it inline
    for r in plan.roots:
        stack = [] if OPS[r.op].kind == "source" else list(r.ins)
        seen = set()
        while stack:
            x = stack.pop()
            if x in seen or x in plan.buffers or x not in prod or prod[x].op == "const":
                continue
            seen.add(x)
            owners.setdefault(x, set()).add(r.out)
            if OPS[prod[x].op].kind != "source":
                stack.extend(prod[x].ins)
    roots = {n.out for n in plan.roots}
    order = {n.out: i for i, n in enumerate(g.nodes)}
    parent = {}

    def find(k):
        while parent.get(k, k) != k:
            parent[k] = parent.get(parent[k], parent[k])
            k = parent[k]
        return k
    key = {}                                 # value -> its part: a root, or a chain of shared values
    for n in g.nodes:
        own = owners.get(n.out, set())
        if n.out in roots or len(own) == 1:
            key[n.out] = n.out if n.out in roots else next(iter(own))
        elif own:
            chains = {find(key[x]) for x in n.ins if x in key and x not in roots and owners.get(x) == own}
            k = min(chains, key=lambda c: order[c[1]]) if chains else ("shared", n.out)
            for c in chains:
                parent[c] = k                # a node that joins two chains merges them
            key[n.out] = k
    hidden = set()
    for n in reversed(g.nodes):              # consumers first: a hidden value joins one of them
        for x in n.ins:
            if x in prod and x not in key and n.out in key:
                key[x] = key[n.out]
                hidden.add(x)
    parts = {}
    for n in g.nodes:
        k = key[n.out] if key[n.out] in roots else find(key[n.out])
        part = parts.setdefault(k, _Part(shared=k not in roots))
        part.nodes.append(n)
        if n.out in hidden:
            part.hidden.add(n.out)
    return sorted(parts.values(), key=lambda p: order[_last(p).out])


def _last(part):
    """The node a part stands for: its last computed one (a loop's root)."""
    return next(n for n in reversed(part.nodes) if n.out not in part.hidden)


def _forward_values(g, base) -> set:
    """Values of g that base computes too: equal op, attributes and inputs, followed back to
    the parameters (the passes may rebuild a forward node, so identity is not enough)."""
    canon = {}

    def key_of(graph):
        ids = {p: canon.setdefault(("param", i), len(canon)) for i, p in enumerate(graph.params)}
        for n in graph.nodes:
            k = (n.op, n.attrs, tuple(ids.get(x, -1) for x in n.ins))
            ids[n.out] = canon.setdefault(k, len(canon))
        return ids
    base_ids = set(key_of(base).values())
    keys = key_of(g)
    return {n.out for n in g.nodes if keys[n.out] in base_ids}


def _output_names(g, kind, wrt) -> dict:
    """Output value -> its names in the picture: `grad w` for gradients, else `output k`."""
    names = [f"output {k}" for k in range(len(g.outputs))]
    if kind in ("grad", "vjp"):
        names = [f"grad {w}" for w in wrt]
    elif kind == "value_and_grad":
        names = ["value"] + [f"grad {w}" for w in wrt]
    out = {}
    for v, nm in zip(g.outputs, names):
        out.setdefault(v, []).append(nm)
    return out


def _wrap(words) -> str:
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > LINE:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return "\n".join(lines + [cur])


def _esc(text) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_graph(dot: str, path: str):
    from .cli import UserError
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower()
    if fmt not in ("dot", "gv", "svg", "png"):
        raise UserError(f"graph output must end in .dot, .svg or .png, not {p.name}")
    if fmt in ("dot", "gv"):
        p.write_text(dot + "\n")
        return
    exe = shutil.which("dot")
    if exe is None:
        raise UserError("Graphviz's `dot` is not installed: write a .dot file (-o graph.dot) "
                        "or install graphviz for SVG and PNG")
    res = subprocess.run([exe, f"-T{fmt}", "-o", str(p)], input=dot, text=True, capture_output=True)
    if res.returncode != 0:
        raise UserError(f"dot failed: {res.stderr.strip()}")
