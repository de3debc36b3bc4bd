"""The gradc command through subprocesses: outputs, exit statuses, and no tracebacks."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).parent.parent / "samples"


def gradc(*args, cwd=None):
    res = subprocess.run([sys.executable, "-m", "gradc", *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, timeout=300)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_run_named_function_with_json():
    res = gradc("run", SAMPLES / "tutorial_vector.ad", "f_vjp", "x=[2, 5]", "y=[3,7]", "ct=[1,1]", "--json",
                "--target", "reference")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"function": "f_vjp", "outputs": [[3.0, 7.0], [8.0, 19.0], [1.0, 1.0]]}


def test_run_with_npy_input(tmp_path):
    np.save(tmp_path / "x.npy", np.array([3.0, 7.0]))
    res = gradc("run", SAMPLES / "tutorial_sum_exp.ad", "f_grad", f"x=@{tmp_path / 'x.npy'}", "--json")
    out = json.loads(res.stdout)["outputs"][0]
    np.testing.assert_allclose(out, [3.6204, -10.9223], atol=1e-4)


def test_run_sample_examples():
    res = gradc("run", SAMPLES / "tutorial_scalar.ad")
    assert res.returncode == 0
    assert "z_grad(x=2, y=3) -> 3., 8.  ok" in res.stdout


def test_run_expected_compile_failure_sample():
    res = gradc("run", SAMPLES / "detached_error.ad")
    assert res.returncode == 0 and "fails to compile, as expected" in res.stdout
    assert "does not require grad" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["run", "missing.ad"], "gradc: error: no such file: missing.ad"),
    (["run", SAMPLES / "perceptron.ad", "nope", "w=1"], "no function 'nope'"),
    (["run", SAMPLES / "perceptron.ad", "loss", "w=abc"], "w: cannot read 'abc'"),
    (["run", SAMPLES / "perceptron.ad", "loss", "w=1"], "missing argument(s): b, x, y"),
    (["run", SAMPLES / "perceptron.ad", "loss", "w=[1, 2]", "b=0", "x=1", "y=0"], "parameter 'w' expects f64"),
    (["run", SAMPLES / "perceptron.ad", "w=1"], "name the function to call"),
    (["run", SAMPLES / "perceptron.ad", "loss", "w"], "NAME=VALUE"),
    (["run", SAMPLES / "perceptron.ad", "loss", "w=@nofile.npy"], "cannot load nofile.npy"),
    (["build", SAMPLES / "perceptron.ad", "--target", "tpu"], "unknown target 'tpu'"),
    (["graph", SAMPLES / "perceptron.ad", "nope"], "no function 'nope'"),
    (["graph", SAMPLES / "perceptron.ad", "loss_grad", "-o", "x.pdf"], "must end in .dot, .svg or .png"),
])
def test_user_mistakes_exit_1_with_a_message(args, message, tmp_path):
    res = gradc(*args, cwd=tmp_path)
    assert res.returncode == 1
    assert message in res.stderr


def test_compile_error_format(tmp_path):
    p = tmp_path / "bad.ad"
    p.write_text("fn f(x: f32) -> f32 {\n    return x + q\n}\n")
    res = gradc("build", "bad.ad", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.splitlines() == ["bad.ad:2:16: error: unknown name 'q'", "    return x + q",
                                       "               ^"]


def test_binary_file_is_a_clean_error(tmp_path):
    p = tmp_path / "bin.ad"
    p.write_bytes(b"\xff\xfe\x00garbage")
    res = gradc("build", p)
    assert res.returncode == 1 and "error" in res.stderr


@pytest.mark.parametrize("stage", ["ast", "ir", "grad-ir", "opt-ir"])
def test_emit_stages(stage):
    res = gradc("build", SAMPLES / "perceptron.ad", "--emit", stage)
    assert res.returncode == 0 and res.stdout.strip()


def test_print_after_a_pass():
    res = gradc("build", SAMPLES / "perceptron.ad", "--emit", "opt-ir", "--print-after", "cse")
    assert "// after cse" in res.stdout


def test_check_reports_errors_per_wrt():
    res = gradc("check", SAMPLES / "mlp_softmax.ad")
    assert res.returncode == 0, res.stdout
    assert "loss_grad (grad of loss, wrt w1, b1, w2, b2)" in res.stdout
    assert "all gradients agree with finite differences" in res.stdout


def test_check_fails_on_a_wrong_gradient(tmp_path):
    # a hook that doubles the gradient makes it disagree with finite differences
    p = tmp_path / "wrong.ad"
    p.write_text("fn twice(g) { return g * 2 }\nfn f(x: f64) -> f64 { return hook(x, twice) * x }\n"
                 "let g = grad(f)\n")
    res = gradc("check", p, "g")
    assert res.returncode == 1 and "FAIL" in res.stdout


def test_graph_dot_marks_leaves_wrt_and_adjoint(tmp_path):
    res = gradc("graph", SAMPLES / "tutorial_vector.ad", "total_grad", "--unoptimized")
    dot = res.stdout
    assert dot.startswith('digraph "total_grad"')
    assert "(requires grad)" in dot and "(retain_grad)" in dot and "leaf" in dot
    assert "#ffd6a5" in dot and "subgraph cluster_derivative" in dot     # derivative nodes
    res = gradc("graph", SAMPLES / "tutorial_vector.ad", "total_grad", "-o", tmp_path / "g.dot")
    assert res.returncode == 0 and (tmp_path / "g.dot").read_text().startswith("digraph")


def test_graph_is_optimized_unless_asked():
    opt = gradc("graph", SAMPLES / "mlp_softmax.ad", "loss_grad").stdout
    unopt = gradc("graph", SAMPLES / "mlp_softmax.ad", "loss_grad", "--unoptimized").stdout
    count = lambda dot: sum(1 for line in dot.splitlines() if "label=" in line and "tooltip=" in line)
    assert 0 < count(opt) < count(unopt) / 2


def test_version():
    res = gradc("--version")
    assert res.returncode == 0 and res.stdout.startswith("gradc ")


def test_check_at_examples_of_a_fast_oscillating_function():
    # sin(x**4.5) at 10.5 oscillates fast: plain central differences are off by 0.5% there
    res = gradc("check", SAMPLES / "tutorial_sin_float32.ad", "z_grad", "--at-examples")
    assert res.returncode == 0, res.stdout


def test_check_notes_gradient_hooks():
    res = gradc("check", SAMPLES / "tutorial_hook.ad", "f_vjp")
    assert "a gradient hook changes this gradient on purpose" in res.stdout and res.returncode == 1
