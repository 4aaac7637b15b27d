"""mpo.squeeze: dimension squeezing (MPOP Algorithm 2) without any framework."""

import numpy as np
import pytest

import mpo


@pytest.fixture
def mpos():
    rng = np.random.default_rng(7)
    # Decaying spectra so the cheapest cut moves between matrices as bonds shrink.
    return {
        name: mpo.decompose(rng.standard_normal((16, 16)) * scale, shape=((2, 4, 2), (2, 4, 2)))
        for name, scale in (("a", 1.0), ("b", 0.5))
    }


def _error(mpos, dense):
    return sum(float(np.linalg.norm(m.to_dense() - dense[n])) for n, m in mpos.items())


def test_each_step_cuts_the_smallest_next_singular_value(mpos):
    dense = {n: m.to_dense() for n, m in mpos.items()}
    seen = []
    result = mpo.squeeze(
        mpos, lambda ms: None, lambda ms: _error(ms, dense), delta=1e9, max_steps=6,
        on_step=lambda step, kept: seen.append((step, kept)),
    )
    assert result.stop == "max_steps" and len(result.history) == 6
    state = dict(mpos)
    for step, kept in seen:
        candidates = [
            (float(m.spectra[k][m.bond_dims[k] - 1]), n, k)
            for n, m in state.items()
            for k in mpo.central_bonds(m) if m.bond_dims[k] > 1
        ]
        value, name, bond = min(candidates)
        assert (step.name, step.bond, step.dropped) == (name, bond, pytest.approx(value))
        assert kept[name].bond_dims[bond] == state[name].bond_dims[bond] - 1 == step.bond_dim
        state = kept
    assert result.mpos["a"].bond_dims == state["a"].bond_dims
    # The inputs are untouched.
    assert all(m.bond_dims == (4, 4) for m in mpos.values())


def test_threshold_rolls_back_the_breaking_step(mpos):
    dense = {n: m.to_dense() for n, m in mpos.items()}
    result = mpo.squeeze(mpos, lambda ms: None, lambda ms: _error(ms, dense), delta=0.8, max_steps=100)
    assert result.stop == "threshold"
    last = result.history[-1]
    assert not last.accepted and last.gap > 0.8
    assert all(s.accepted and s.gap <= 0.8 for s in result.history[:-1])
    assert _error(result.mpos, dense) <= 0.8
    assert result.start_metric == pytest.approx(0.0, abs=1e-9)


def test_finetune_result_is_kept_and_exhaustion_stops(mpos):
    replaced = []

    def finetune(ms):
        # A "trained" MPO: re-canonicalised cores, as a framework adapter returns them.
        out = {n: mpo.MPO.from_cores(m.cores, shape=m.shape) for n, m in ms.items()}
        replaced.append(out)
        return out

    result = mpo.squeeze({"a": mpos["a"]}, finetune, lambda ms: 0.0, delta=0.0, max_steps=100)
    assert result.stop == "exhausted"
    assert result.mpos["a"].bond_dims == (1, 1)  # both central bonds at min_bond
    assert len(replaced) == len(result.history) == 6


def test_callback_exception_propagates(mpos):
    calls = []

    def evaluate(ms):
        calls.append(ms)
        if len(calls) == 3:
            raise KeyError("metric unavailable")
        return 0.0

    with pytest.raises(KeyError, match="metric unavailable"):
        mpo.squeeze(mpos, lambda ms: None, evaluate, delta=1.0, max_steps=5)
    assert all(m.bond_dims == (4, 4) for m in mpos.values())


def test_bad_arguments(mpos):
    ok = dict(finetune=lambda ms: None, evaluate=lambda ms: 0.0)
    with pytest.raises(ValueError, match="delta must be a number >= 0.0, got -1"):
        mpo.squeeze(mpos, **ok, delta=-1, max_steps=1)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 0, got 1.5"):
        mpo.squeeze(mpos, **ok, delta=0.1, max_steps=1.5)
    with pytest.raises(ValueError, match="min_bond must be an integer >= 1, got 0"):
        mpo.squeeze(mpos, **ok, delta=0.1, max_steps=1, min_bond=0)
    with pytest.raises(ValueError, match="mpos must be a non-empty mapping"):
        mpo.squeeze({}, **ok, delta=0.1, max_steps=1)
    with pytest.raises(TypeError, match=r"mpos\['x'\] must be an MPO, got ndarray"):
        mpo.squeeze({"x": np.eye(2)}, **ok, delta=0.1, max_steps=1)
