"""`gradc graph`: the DOT text of the optimized and the unoptimized picture (Graphviz not needed)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gradc import graph
from gradc.api import lower_checked
from gradc.cli import UserError
from gradc.compiler.pipeline import optimize
from gradc.frontend.diagnostics import CompileError

HERE = Path(__file__).parent / "graph"
SAMPLES = Path(__file__).parent.parent / "samples"


def module(path):
    return lower_checked(path.read_text(), str(path))


def nodes(dot):
    """DOT node name -> its attribute text (edges and defaults left out)."""
    return dict(re.findall(r"^\s+([vp]\d+) \[(.*)\];$", dot, re.M))


def cluster(dot, name):
    body = re.search(r"subgraph cluster_%s \{(.*?)\n  \}" % name, dot, re.S).group(1)
    return set(re.findall(r"^\s+(v\d+) \[", body, re.M))


def numbered(g):
    """The numbers `--emit opt-ir` gives the graph's nodes (its own: loop bodies printed after
    it are drawn inside their loop's node)."""
    own = str(g).split("\n}\n")[0]
    return {int(m) for m in re.findall(r"^  %(\d+) = ", own, re.M)}


def drawn(dot):
    """Graph nodes the picture accounts for: each picture node's tooltip lists its IR lines."""
    return {int(m) for m in re.findall(r"%(\d+) = ", " ".join(re.findall(r'tooltip="([^"]*)"', dot)))}


def test_default_is_the_compiled_graph_without_unused_gradients():
    mod = module(HERE / "linear.ad")
    dot = graph.to_dot(mod, "loss_grad")
    compiled = optimize(mod.graphs["loss_grad"])
    assert drawn(dot) == numbered(compiled)
    assert "log" not in dot                        # d(a**2)/d2 = a**2 log a: pow's unused partial
    # one output, w's gradient; x and y are only leaves
    assert dot.count("peripheries=2") == 1 and "grad w" in dot
    shown = nodes(dot)
    assert len(shown) == 3 + 3                     # 3 parameters, 3 loops: x @ w, the adjoint, x.T @ g
    unopt = graph.to_dot(mod, "loss_grad", optimized=False)
    assert "log" in unopt and len(nodes(unopt)) == 3 + len(mod.graphs["loss_grad"].nodes)


def test_fused_elementwise_chain_is_one_node():
    mod = module(HERE / "linear.ad")
    dot = graph.to_dot(mod, "loss_grad")
    fused = [attrs for attrs in nodes(dot).values() if " sub " in attrs and " gmul " in attrs]
    assert len(fused) == 1                         # x @ w - y, its square's adjoint: one loop
    assert re.search(r'label="sub [^"]*gmul', fused[0])


def test_forward_and_backward_clusters():
    mod = module(HERE / "mlp2.ad")
    dot = graph.to_dot(mod, "loss_grad")
    fwd, bwd = cluster(dot, "forward"), cluster(dot, "derivative")
    shown = nodes(dot)
    assert fwd and bwd and not fwd & bwd
    assert fwd | bwd == {k for k in shown if k.startswith("v")}
    tanh = [k for k in shown if "tanh" in shown[k]]
    assert tanh and set(tanh) <= fwd
    outputs = {k for k, a in shown.items() if "peripheries=2" in a}
    assert len(outputs) == 4 and outputs <= bwd
    assert 'label="backward"' in dot and 'label="forward: loss"' in dot


def test_two_layer_perceptron_stays_small():
    mod = module(HERE / "mlp2.ad")
    dot = graph.to_dot(mod, "loss_grad")
    compiled = optimize(mod.graphs["loss_grad"])
    assert drawn(dot) == numbered(compiled)
    unopt = graph.to_dot(mod, "loss_grad", optimized=False)
    assert len(nodes(dot)) <= 22 < 80 <= len(nodes(unopt))
    # compact labels: no line longer than a few op names
    labels = [re.search(r'label="([^"]*)"', a).group(1) for a in nodes(dot).values()]
    assert max(len(line) for lab in labels for line in lab.split("\\n")) <= 40


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_two_layer_perceptron_fits_a_screen(tmp_path):
    mod = module(HERE / "mlp2.ad")
    png = subprocess.run(["dot", "-Tpng"], input=graph.to_dot(mod, "loss_grad").encode(),
                         capture_output=True, check=True).stdout
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width <= 1200 and height <= 1000, (width, height)


def test_parameter_returned_as_it_is_is_marked_as_an_output():
    mod = module(SAMPLES / "tutorial_vector.ad")
    dot = graph.to_dot(mod, "total_grad")         # d(x * y + y**2)/dx is y itself
    y = nodes(dot)["p1"]
    assert "= grad x" in y and "peripheries=2" in y
    unopt = graph.to_dot(mod, "total_grad", optimized=False)
    assert "(retain_grad)" in unopt and "(requires grad)" in unopt


def test_every_sample_draws_both_ways():
    for path in sorted(SAMPLES.glob("*.ad")):
        try:
            mod = module(path)
        except CompileError:
            continue                               # a sample of an error message
        for name, g in mod.graphs.items():
            dot = graph.to_dot(mod, name)
            assert drawn(dot) == numbered(optimize(g)), (path.name, name)
            assert len(nodes(graph.to_dot(mod, name, optimized=False))) == len(g.params) + len(g.nodes)


def test_svg_without_graphviz_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="Graphviz's `dot` is not installed"):
        graph.write_graph("digraph {}", str(tmp_path / "g.svg"))
    graph.write_graph("digraph {}", str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text() == "digraph {}\n"
