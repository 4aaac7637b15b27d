"""mpo.torch.fisher_information: squared mini-batch gradients, zeroed between batches (docs/ALGORITHMS.md §10)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mpo.torch import fisher_information  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(2, 4))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 3, generator=g) for _ in range(4)]


def _loss(model, batch):
    return model(batch).sum()


def test_mean_of_squared_batch_gradients():
    model = _model()
    batches = _batches()
    got = fisher_information(model, batches, _loss, ["0"], axis=None)["0"]
    # d(sum of outputs)/dW0[o, i] = sum_b x[b, i] * (sum of W1's column o): computed by hand per batch.
    col = model[1].weight.detach().sum(dim=0).double()
    expected = sum(torch.outer(col, b.double().sum(dim=0)) ** 2 for b in batches) / len(batches)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    # A running sum of gradients (no zeroing) would square the summed gradient instead.
    running = sum(torch.outer(col, b.double().sum(dim=0)) for b in batches)
    assert not np.allclose(got, (running**2 / len(batches)).numpy(), rtol=1e-3)
    assert all(p.grad is None for p in model.parameters())


def test_axes_and_module_selection():
    model = _model()
    full = fisher_information(model, _batches(), _loss, axis=None)
    assert set(full) == {"0", "1"} and full["1"].shape == (4, 2)
    rows = fisher_information(model, _batches(), _loss, [model[1]], axis="in")
    np.testing.assert_allclose(rows["1"], full["1"].sum(axis=0), rtol=1e-10)
    out = fisher_information(model, _batches(), _loss, ["1"], axis="out")
    np.testing.assert_allclose(out["1"], full["1"].sum(axis=1), rtol=1e-10)
    assert rows["1"].dtype == np.float64


def test_progress_reports_every_batch(capsys):
    seen = []
    fisher_information(_model(), _batches(), _loss, progress=lambda k, total, loss: seen.append((k, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    fisher_information(_model(), iter(_batches()), _loss, progress=True)
    err = capsys.readouterr().err
    assert "fisher: batch 4/? loss" in err


def test_bad_input():
    model = _model()
    with pytest.raises(ValueError, match=r"axis must be one of \('in', 'out', None\), got 'rows'"):
        fisher_information(model, _batches(), _loss, axis="rows")
    with pytest.raises(ValueError, match=r"the model has no module named 'nope'"):
        fisher_information(model, _batches(), _loss, ["nope"])
    with pytest.raises(ValueError, match=r"module '' has no 2-D weight to weigh"):
        fisher_information(model, _batches(), _loss, [""])
    with pytest.raises(ValueError, match=r"module Linear is not part of the model"):
        fisher_information(model, _batches(), _loss, [torch.nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=r"modules must be None or a sequence"):
        fisher_information(model, _batches(), _loss, "0")
    with pytest.raises(ValueError, match=r"data gave no batches"):
        fisher_information(model, [], _loss)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor, got Tensor"):
        fisher_information(model, _batches(), lambda m, b: m(b))
    with pytest.raises(TypeError, match=r"loss_fn must be callable"):
        fisher_information(model, _batches(), None)
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the weight of '0' has requires_grad=False"):
        fisher_information(model, _batches(), _loss, ["0"])
    with pytest.raises(ValueError, match=r"the model has no nn.Linear modules"):
        fisher_information(torch.nn.ReLU(), _batches(), _loss)


def test_fisher_rows_feed_the_weighted_factorizations():
    import mpo

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(16, 12, generator=g), torch.randn(16, 1, generator=g)) for _ in range(3)]
    f = fisher_information(model, batches, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), ["0"])["0"]
    assert f.shape == (12,) and (f > 0).all()
    weight = model[0].weight.detach().double().numpy()  # (out, in)
    # axis="in" weights the input features: the rows of weight.T, the columns of weight.
    a = mpo.weighted_svd(weight, 3, f, axis=1)
    b = mpo.weighted_svd(weight.T, 3, f, axis=0)
    np.testing.assert_allclose(a.to_dense(), b.to_dense().T, atol=1e-10)
    m = mpo.decompose(weight.T, ((2, 2, 3), (2, 2, 2)), max_bond=3, row_weights=f)
    x = np.random.default_rng(0).standard_normal((5, 12))
    np.testing.assert_allclose(x @ m, x @ m.to_dense(), atol=1e-10)


def test_a_failure_mid_run_leaves_no_partial_gradients():
    # The progress callback runs after a batch's backward pass: failing there used to leave that
    # batch's gradients on the model.
    model = _model()

    def progress(batch, total, loss):
        raise RuntimeError(f"progress failed after batch {batch}")

    with pytest.raises(RuntimeError, match="progress failed after batch 1"):
        fisher_information(model, _batches(), _loss, progress=progress)
    assert all(p.grad is None for p in model.parameters())
