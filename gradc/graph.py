"""`gradc graph`: the forward and adjoint graph of a function as Graphviz DOT, SVG or PNG."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .compiler.ir import format_attr


def _label(n) -> str:
    attrs = [f"{k}={format_attr(v)}" for k, v in n.attrs if k not in ("dtype", "shape", "data")]
    if n.op == "const":
        return f"{n.attr('value')!r}\\n{n.out.type}"
    text = n.op + (f"\\n{', '.join(attrs)}" if attrs else "")
    return f"{text}\\n{n.out.type}"


def to_dot(mod, name) -> str:
    """Leaves (parameters) as boxes; wrt values and retained intermediates marked; forward nodes
    in blue, derivative nodes in orange, outputs double-circled."""
    g = mod.graphs[name]
    kind, base, wrt = mod.derived.get(name, (None, g, ()))
    forward = {n.out for n in base.nodes}
    lets = {v: k for k, v in g.names}
    wrt_vals = {v for k, v in list(zip(g.param_names, g.params)) + list(g.names) if k in wrt}
    outputs = set(g.outputs)
    title = f"{name}" + (f" = {kind}({base.name}, wrt=({', '.join(wrt)}))" if kind else "")
    lines = [f'digraph "{name}" {{', '  rankdir=TB;', f'  label="{title}"; labelloc=t;',
             '  node [fontname="Helvetica", fontsize=10, style=filled];']
    for pname, p in zip(g.param_names, g.params):
        color = "#f4a261" if p in wrt_vals else "#dddddd"
        extra = "\\n(requires grad)" if p in wrt_vals else ""
        role = "seed / tangent" if p not in forward and p not in base.params else "leaf"
        lines.append(f'  v{p.id} [shape=box, fillcolor="{color}", label="{pname}: {p.type}\\n{role}{extra}"];')
    for n in g.nodes:
        fill = "#a8dadc" if n.out in forward else "#ffd6a5"
        label = _label(n)
        if n.out in lets:
            label = f"{lets[n.out]} = {label}" + ("\\n(retain_grad)" if n.out in wrt_vals else "")
        shape = "doublecircle" if n.out in outputs else ("box" if n.op == "const" else "ellipse")
        if n.out in wrt_vals:
            fill = "#f4a261"
        lines.append(f'  v{n.out.id} [shape={shape}, fillcolor="{fill}", label="{label}"];')
        for i in n.ins:
            lines.append(f"  v{i.id} -> v{n.out.id};")
    for k, o in enumerate(g.outputs):
        lines.append(f'  out{k} [shape=plaintext, style="", label="output {k}"];')
        lines.append(f"  v{o.id} -> out{k} [style=dashed];")
    lines.append("}")
    return "\n".join(lines)


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
