"""The private mpo._core module: its stub stays honest, and its primitives check their input."""

import ast
from pathlib import Path

import numpy as np
import pytest

import mpo
from mpo import _core

STUB = Path(mpo.__file__).with_name("_core.pyi")


def test_stub_lists_exactly_the_compiled_functions_and_classes():
    tree = ast.parse(STUB.read_text())
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    stubbed -= {"DecomposeResult"}  # a TypedDict describing decompose's result, not a binding
    compiled = {name for name in dir(_core) if not name.startswith("_")}
    assert stubbed == compiled


def test_decompose_rejects_other_dtypes_and_ranks():
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.decompose(np.zeros((4, 4), dtype=np.int64), [2, 2], [2, 2], [0], True)
    with pytest.raises(ValueError, match="2-D"):
        _core.decompose(np.zeros(16), [2, 2], [2, 2], [0], True)
    with pytest.raises(ValueError, match="row factors multiply to 4"):
        _core.decompose(np.zeros((5, 4)), [2, 2], [2, 2], [0], True)


def test_rebuild_and_canonicalize_reject_mismatched_bonds():
    cores = [np.ones((1, 2, 2, 3)), np.ones((2, 2, 2, 1))]
    with pytest.raises(ValueError, match="bond 0 disagrees"):
        _core.rebuild(cores, "float64")
    with pytest.raises(ValueError, match="bond 0 disagrees"):
        _core.canonicalize(cores, "float64")
    with pytest.raises(TypeError, match="dtype must be"):
        _core.rebuild(cores, "int8")


def test_canonicalize_keeps_the_matrix_and_finds_its_spectra():
    rng = np.random.default_rng(3)
    cores = [rng.standard_normal(s) for s in [(1, 2, 3, 4), (4, 3, 2, 5), (5, 2, 2, 1)]]
    dense = _core.rebuild(cores, "float64")
    canon, spectra = _core.canonicalize(cores, "float64")
    np.testing.assert_allclose(_core.rebuild(canon, "float64"), dense, atol=1e-12 * np.linalg.norm(dense))
    m = mpo.MPO.from_cores(cores)
    tensor = dense.reshape(2, 3, 2, 3, 2, 2).transpose(0, 3, 1, 4, 2, 5)  # (i1 j1 i2 j2 i3 j3)
    first = np.linalg.svd(tensor.reshape(6, -1), compute_uv=False)
    np.testing.assert_allclose(m.spectra[0], first[: len(m.spectra[0])], rtol=1e-10)
    np.testing.assert_allclose(m.spectra[0], spectra[0])


def test_order_bonds_of_a_mixed_canonical_chain_is_its_canonical_form():
    # A capped sweep of the core leaves a mixed canonical chain; rotating its bonds must give what the
    # full canonicalisation gives: the same matrix and the spectra of its own unfoldings.
    rng = np.random.default_rng(5)
    raw = _core.decompose(rng.standard_normal((48, 36)), [2, 4, 6], [3, 3, 4], [3, 5], False)
    dense = _core.rebuild(raw["cores"], "float64")
    ordered, spectra = _core.order_bonds(raw["cores"], "float64")
    _, want = _core.canonicalize(raw["cores"], "float64")
    np.testing.assert_allclose(_core.rebuild(ordered, "float64"), dense, atol=1e-12 * np.linalg.norm(dense))
    for got, ref in zip(spectra, want):
        np.testing.assert_allclose(got, ref, rtol=1e-10)
    tensor = dense.reshape(2, 4, 6, 3, 3, 4).transpose(0, 3, 1, 4, 2, 5)  # (i1 j1 i2 j2 i3 j3)
    first = np.linalg.svd(tensor.reshape(6, -1), compute_uv=False)
    np.testing.assert_allclose(spectra[0], first[: len(spectra[0])], rtol=1e-10)
    with pytest.raises(ValueError, match="bond 0 disagrees"):
        _core.order_bonds([np.ones((1, 2, 2, 3)), np.ones((2, 2, 2, 1))], "float64")


def test_entropy_of_flat_and_zero_spectra():
    assert _core.entropy(np.ones(8)) == pytest.approx(np.log(8))
    assert _core.entropy(np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="1-D"):
        _core.entropy(np.ones((2, 2)))
