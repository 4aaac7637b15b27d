"""The hand-written ``_core.pyi`` stub checked against the compiled ``mpo._core`` inside the suite (so
``python -m pytest`` runs it wherever the tests run). mypy over python/mpo is configured in
pyproject.toml but not yet clean, so it is not run here yet."""

from __future__ import annotations

import ast
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

