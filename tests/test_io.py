"""save()/load(): bit-exact round trips, and clear errors on files that are not ours;
repr(): shows shape, factors, bonds, rho and the bound."""

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpo
from strategies import cases, full_bonds


def assert_same_mpo(a, b):
    """Every public array and scalar of b equals a's bit for bit."""
    assert type(a) is type(b)
    assert len(a.cores) == len(b.cores)
    for x, y in zip(a.cores, b.cores):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)
        assert x.tobytes() == y.tobytes()
    assert len(a.spectra) == len(b.spectra)
    for x, y in zip(a.spectra, b.spectra):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    ea, eb = np.asarray(a.truncation_errors), np.asarray(b.truncation_errors)
    assert ea.dtype == eb.dtype and ea.tobytes() == eb.tobytes()
    for name in ("in_shape", "out_shape", "shape", "padded_shape", "bond_dims"):
        assert tuple(getattr(a, name)) == tuple(getattr(b, name)), name
    for name in ("n", "central_index", "num_params", "central_params", "auxiliary_params"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.dtype == b.dtype
    assert a.norm == b.norm
    assert a.compression_ratio == b.compression_ratio
    assert a.error_bound() == b.error_bound()
    assert a.relative_error_bound() == b.relative_error_bound()
    assert np.asarray(a.entropy()).tobytes() == np.asarray(b.entropy()).tobytes()
    # The rebuild reads the cores where they lie: Eigen's vectorised kernels peel loops for alignment,
    # so equal cores at other addresses can round differently in the last bit. Equal to rounding.
    da, db = a.to_dense(), b.to_dense()
    assert da.dtype == db.dtype and da.shape == db.shape
    tiny = 16 * np.finfo(da.dtype).eps * max(float(np.abs(da).max(initial=0.0)), np.finfo(da.dtype).tiny)
    np.testing.assert_allclose(db, da, rtol=0, atol=tiny)


def _example(dtype=np.float64, **kw):
    rng = np.random.default_rng(3)
    M = rng.standard_normal((24, 18)).astype(dtype)
    return mpo.decompose(M, ((2, 3, 4), (3, 2, 3)), **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", [{}, {"max_bond": 3}, {"tol": 0.3}, {"max_bond": [2, 5]}])
def test_round_trip_bit_exact(tmp_path, dtype, kw):
    m = _example(dtype, **kw)
    p = tmp_path / "m.npz"
    m.save(p)
    assert p.exists()
    loaded = mpo.load(p)
    assert_same_mpo(m, loaded)


def test_round_trip_str_path(tmp_path):
    m = _example()
    p = str(tmp_path / "m.npz")
    m.save(p)
    assert_same_mpo(m, mpo.load(p))


def test_round_trip_padded(tmp_path):
    M = np.random.default_rng(4).standard_normal((30, 7))
    m = mpo.decompose(M, n=3)
    m.save(tmp_path / "p.npz")
    loaded = mpo.load(tmp_path / "p.npz")
    assert_same_mpo(m, loaded)
    assert loaded.to_dense().shape == (30, 7)


def test_round_trip_same_path_without_npz_suffix(tmp_path):
    """Whatever name save() writes, load() given the same path must find it."""
    m = _example()
    p = tmp_path / "weights.mpo"
    m.save(p)
    assert_same_mpo(m, mpo.load(p))


def test_loaded_mpo_truncates_like_the_original(tmp_path):
    m = _example()
    m.save(tmp_path / "m.npz")
    loaded = mpo.load(tmp_path / "m.npz")
    assert_same_mpo(m.truncate(max_bond=2), loaded.truncate(max_bond=2))
    assert_same_mpo(m.truncate(tol=0.4), loaded.truncate(tol=0.4))


def test_saved_file_is_plain_npz(tmp_path):
    """A saved MPO is readable without pickle (safe to load from untrusted sources), and what it holds
    is the MPO's own numbers: read back with plain NumPy, they equal the cores, spectra and errors."""
    m = _example()
    p = tmp_path / "m.npz"
    m.save(p)
    with np.load(p, allow_pickle=False) as z:
        read = {k: z[k] for k in z.files}
    assert all(a.dtype != object for a in read.values())
    assert str(read["kind"]) == "mpo.MPO" and int(read["format_version"]) == mpo.FORMAT_VERSION
    assert tuple(read["shape"]) == m.shape
    for k, core in enumerate(m.cores):
        assert read[f"core_{k}"].dtype == core.dtype and np.array_equal(read[f"core_{k}"], core)
    for k, s in enumerate(m.spectra):
        assert np.array_equal(read[f"spectrum_{k}"], s)
    assert np.array_equal(read["truncation_errors"], m.truncation_errors)
    assert float(read["norm"]) == m.norm


@given(cases())
def test_round_trip_property(case):
    m = mpo.decompose(case.M, case.shape, max_bond=max(1, max(full_bonds(*case.shape)) // 2))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.npz"
        m.save(p)
        assert_same_mpo(m, mpo.load(p))


# ------------------------------------------------------------------- bad files


def _rewrite(src, dst, change):
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    change(data)
    np.savez(dst, **data)


def _version_key(path):
    with np.load(path, allow_pickle=False) as z:
        keys = [k for k in z.files if "version" in k.lower()]
    assert keys, "the saved npz carries no format version field"
    return keys[0]


@pytest.mark.parametrize("bad_version", [999, -1])
def test_wrong_format_version(tmp_path, bad_version):
    m = _example()
    src, dst = tmp_path / "m.npz", tmp_path / "bad.npz"
    m.save(src)
    key = _version_key(src)

    def change(data):
        old = data[key]
        data[key] = np.asarray(bad_version).astype(old.dtype) if old.dtype.kind in "iuf" else np.asarray(str(bad_version))

    _rewrite(src, dst, change)
    with pytest.raises(ValueError, match=rf"(?i)version.*{bad_version}|{bad_version}.*version"):
        mpo.load(dst)


def test_missing_format_version(tmp_path):
    m = _example()
    src, dst = tmp_path / "m.npz", tmp_path / "bad.npz"
    m.save(src)
    key = _version_key(src)
    _rewrite(src, dst, lambda data: data.pop(key))
    with pytest.raises(ValueError, match=r"(?i)version|mpo|format"):
        mpo.load(dst)


def test_non_mpo_npz(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, a=np.arange(3), b=np.eye(2))
    with pytest.raises(ValueError, match=r"(?i)mpo|format|version|not"):
        mpo.load(p)


def test_not_an_npz_at_all(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match=r"(?i)mpo|format|npz|zip|not"):
        mpo.load(p)


# ------------------------------------------------------------------------ repr


def test_repr_shows_shape_factors_bonds_rho_bound():
    rng = np.random.default_rng(5)
    M = rng.standard_normal((24, 18))
    m = mpo.decompose(M, ((2, 3, 4), (3, 2, 3)), max_bond=4)
    r = repr(m)
    assert isinstance(r, str) and len(r) < 2000
    assert "24" in r and "18" in r  # shape
    assert re.search(r"2\D+3\D+4", r) and re.search(r"3\D+2\D+3", r)  # factors
    bonds = tuple(m.bond_dims)
    assert re.search(r"\D+".join(str(b) for b in bonds), r)  # bonds in order
    assert re.search(r"(?i)rho|ρ|ratio|compression", r)
    assert re.search(r"(?i)bound|err|ε|eps", r)
    # rho's value is printed (to some precision)
    rho = m.compression_ratio
    shown = [float(x) for x in re.findall(r"\d+\.\d+(?:e-?\d+)?", r)]
    assert any(abs(x - rho) <= 0.01 * rho + 1e-3 for x in shown) or f"{100 * rho:.0f}" in r


def test_repr_does_not_print_arrays():
    rng = np.random.default_rng(6)
    m = mpo.decompose(rng.standard_normal((64, 64)), ((4, 4, 4), (4, 4, 4)))
    assert len(repr(m)) < 1000
    assert "array(" not in repr(m)
