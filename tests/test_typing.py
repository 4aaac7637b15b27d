"""Checked types inside the suite (so ``python -m pytest``, and CI with it, runs them wherever the tests
run): the hand-written ``_core.pyi`` stub against the compiled ``mpo._core``, and mypy over python/mpo
with pyproject.toml's ``[tool.mypy]`` (which checks every call into ``_core`` against that stub)."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import mpo._core as core

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "python" / "mpo" / "_core.pyi"

NO_DEFAULT = object()


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    if text[start:].strip():
        parts.append(text[start:])
    return parts


def binding_signature(doc: str) -> list[tuple[str, object]]:
    """(name, default) of every parameter in pybind11's first docstring line ``f(a: T, b: U = 1) -> R``."""
    first = doc.splitlines()[0]
    start = first.index("(") + 1
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(first[end], 0)
        end += 1
    params = []
    for part in _split_top(first[start : end - 1]):
        name, _, rest = part.partition(":")
        default = NO_DEFAULT
        if "=" in rest:
            default = ast.literal_eval(rest.rpartition("=")[2].strip())
        params.append((name.strip(), default))
    return params


def stub_signatures(source: str) -> dict[str, list[tuple[str, object]]]:
    """(name, default) of every parameter of every function the stub declares, by function name."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            positional = args.posonlyargs + args.args
            defaults = [NO_DEFAULT] * (len(positional) - len(args.defaults)) + [
                ast.literal_eval(d) for d in args.defaults
            ]
            params = list(zip([a.arg for a in positional], defaults))
            params += [
                (a.arg, NO_DEFAULT if d is None else ast.literal_eval(d))
                for a, d in zip(args.kwonlyargs, args.kw_defaults)
            ]
            out[node.name] = params
    return out


def drift(source: str) -> list[str]:
    """Every difference between the stub ``source`` and the compiled module, one line each."""
    stub = stub_signatures(source)
    compiled = {
        name: binding_signature(obj.__doc__ or "")
        for name, obj in vars(core).items()
        if not name.startswith("_") and callable(obj) and not isinstance(obj, type)
    }
    problems = [f"{name}: compiled, missing from the stub" for name in sorted(compiled.keys() - stub.keys())]
    problems += [f"{name}: in the stub, not compiled" for name in sorted(stub.keys() - compiled.keys())]
    for name in sorted(stub.keys() & compiled.keys()):
        if stub[name] != compiled[name]:
            problems.append(f"{name}: stub {stub[name]} != compiled {compiled[name]}")
    return problems


def test_stub_matches_the_compiled_module():
    assert drift(STUB.read_text()) == []


def test_stub_check_sees_drift():
    """The check itself can fail: a renamed parameter, a changed default and a dropped function."""
    source = STUB.read_text()
    renamed = source.replace("out_width: int,", "width: int,", 1)
    assert any(line.startswith("apply:") or line.startswith("rows:") for line in drift(renamed))
    defaults = source.replace('route: str = "auto"', 'route: str = "exact"')
    assert [line.split(":")[0] for line in drift(defaults)] == ["symmetric_eigen"]
    dropped = "\n".join(line for line in source.splitlines() if not line.startswith("def entropy"))
    assert "entropy: compiled, missing from the stub" in drift(dropped)


def test_decompose_result_keys_match_the_stub():
    """The stub's DecomposeResult names exactly the keys (and value kinds) the binding returns."""
    import numpy as np

    raw = core.decompose(np.eye(6), [2, 3], [3, 2], [0])
    tree = ast.parse(STUB.read_text())
    typed = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DecomposeResult")
    fields = [stmt.target.id for stmt in typed.body if isinstance(stmt, ast.AnnAssign)]
    assert sorted(fields) == sorted(raw.keys())
    assert isinstance(raw["norm"], float) and isinstance(raw["randomized"], bool)
    assert all(isinstance(c, bool) for c in raw["cut"]) and isinstance(raw["truncation_errors"], np.ndarray)



def test_sweep_build_keys_match_the_stub():
    """``Sweep.build`` is typed as returning a DecomposeResult too: the same keys as ``decompose``."""
    import numpy as np

    sweep = core.Sweep(np.arange(16.0).reshape(4, 4), [2, 2], [2, 2])
    assert sorted(sweep.build([4]).keys()) == sorted(core.decompose(np.eye(4), [2, 2], [2, 2], [4]).keys())


# ----------------------------------------------------------------------------------------------- mypy
# One cache per checkout, kept in the temp dir between runs (a cold run checks torch's and NumPy's stubs
# too: about a minute of CPU; a warm one a few seconds). Keyed by the checkout so that two worktrees on
# one machine do not keep invalidating each other's entries.
_CACHE = Path(tempfile.gettempdir()) / f"mpo-mypy-{hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]}"


def _mypy(*files: str) -> subprocess.CompletedProcess:
    """mypy with pyproject.toml's configuration (its ``files`` unless ``files`` are given), run from ROOT."""
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(_CACHE), "--no-error-summary", "--hide-error-context", *files]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_mypy_is_clean():
    """mypy over python/mpo reports nothing (mypy is in the test extra, pinned: verdicts change between
    releases)."""
    result = _mypy()
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_mypy_checks_calls_against_the_stub(tmp_path):
    """The check can fail: a call with a wrong argument type into ``_core`` is reported, by the stub's
    parameter name, and a right one is not."""
    bad = tmp_path / "calls.py"
    bad.write_text(
        "import numpy as np\n"
        "from mpo import _core\n"
        "_core.decompose(np.eye(4), [2, 2], [2, 2], [4])\n"
        "_core.decompose(np.eye(4), [2, 2], [2, 2], 4)\n"
        "_core.entropy(np.ones(3)).bit_length()\n"
    )
    result = _mypy(str(bad))
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(lines) == 2, result.stdout
    # By file name, not path: mypy's cache can report an earlier run's identical calls.py under its path.
    assert "calls.py:4: error: " in lines[0] and 'Argument 4 to "decompose"' in lines[0], lines[0]
    assert "calls.py:5: error: " in lines[1] and '"float" has no attribute "bit_length"' in lines[1], lines[1]
