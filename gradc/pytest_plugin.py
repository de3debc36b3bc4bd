"""A pytest plugin: .ad files carrying example calls (# CALL/# ERROR) or lit lines (# RUN) are tests."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import warnings

import pytest

_MARKS = ("# CALL:", "# ERROR:", "# RUN:")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".ad":
        text = file_path.read_text(errors="replace")
        if any(m in text for m in _MARKS):
            return AdFile.from_parent(parent, path=file_path)
    return None


def available_targets():
    from . import api
    return [t for t in api.TARGETS if getattr(api, "target_available", lambda t: (True, ""))(t)[0]]


class AdFile(pytest.File):
    def collect(self):
        text = self.path.read_text(errors="replace")     # a lit test may hold bytes that are not UTF-8
        if "# RUN:" in text:
            for i, line in enumerate(text.splitlines(), 1):
                if "# RUN:" in line:
                    yield LitItem.from_parent(self, name=f"RUN@{i}", command=line.split("# RUN:", 1)[1],
                                              text=text)
            return
        for target in available_targets():
            yield SampleItem.from_parent(self, name=target, target=target, text=text)


class SampleItem(pytest.Item):
    """Every example call of a sample on one target, each result within tolerance of EXPECT."""

    def __init__(self, *, target, text, **kw):
        super().__init__(**kw)
        self.target, self.text = target, text

    def runtest(self):
        from . import api
        from .frontend.diagnostics import CompileError
        from .frontend.examples import mismatch, parse_examples
        ex = parse_examples(self.text)
        if ex.errors:
            with pytest.raises(CompileError) as info:
                api.compile(str(self.path), target=self.target)
            for s in ex.errors:
                assert s in str(info.value), f"the compile error does not say {s!r}:\n{info.value}"
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                module = api.compile(str(self.path), target=self.target)
            except CompileError as err:
                if not getattr(err, "unsupported", False):
                    raise
                pytest.skip(f"not yet on target {self.target}: {err.message}")
        for s in ex.warnings:
            assert any(s in str(w.message) for w in caught), f"no warning says {s!r}"
        assert ex.calls, "a sample without errors must carry example calls"
        for c in ex.calls:
            try:
                out = getattr(module, c.func)(**c.args)
            except RuntimeError as err:
                if not getattr(err, "unsupported", False):       # a target's known limit at run time
                    raise
                pytest.skip(f"not yet on target {self.target}: {err}")
            outs = list(out) if isinstance(out, tuple) and not hasattr(out, "_fields") else [out]
            bad = mismatch(outs, c)
            assert bad is None, f"{self.path.name}:{c.line}: {c.func}: {bad}"

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}[{self.target}]"

    def repr_failure(self, excinfo):
        return str(excinfo.value)


class LitItem(pytest.Item):
    """One RUN line: `[not] %gradc ARGS [2>&1] | %filecheck %s` with the file's CHECK lines."""

    def __init__(self, *, command, text, **kw):
        super().__init__(**kw)
        self.command, self.text = command.strip(), text

    def runtest(self):
        from .filecheck import directives, filecheck
        cmd, _, check = self.command.partition("|")
        words = shlex.split(cmd.replace("%s", shlex.quote(self.path.name)))
        expect_fail = bool(words) and words[0] == "not"
        words = words[1:] if expect_fail else words
        merge = "2>&1" in words
        words = [w for w in words if w != "2>&1"]
        if not words or words[0] != "%gradc":
            raise AssertionError(f"RUN lines start with [not] %gradc, got: {self.command}")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        res = subprocess.run([sys.executable, "-m", "gradc"] + words[1:], text=True, cwd=self.path.parent,
                             env=env, timeout=300, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT if merge else subprocess.PIPE)
        output = res.stdout
        if expect_fail:
            assert res.returncode != 0, f"expected a failure, got exit 0:\n{output}"
        else:
            assert res.returncode == 0, f"exit {res.returncode}:\n{output}\n{res.stderr or ''}"
        assert "Traceback" not in output + (res.stderr or ""), output + (res.stderr or "")
        assert res.returncode != 2, f"an internal compiler error:\n{output}\n{res.stderr or ''}"
        if check.strip():
            checks = directives(self.text)
            assert checks, "a RUN line pipes into %filecheck, but the file has no CHECK lines"
            filecheck(output, checks)

    def reportinfo(self):
        return self.path, 0, f"{self.path.name}::{self.name}"

    def repr_failure(self, excinfo):
        return str(excinfo.value)
