"""Task adapters (mpo.torch.save_adapter / load_adapter) and central-bond cuts (mpo.cut_central, squeeze_to)."""

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
from torch import nn  # noqa: E402

import mpo  # noqa: E402
import mpo.torch as mt  # noqa: E402


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(60, 24)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(24, 48), nn.GELU(), nn.Linear(48, 24)) for _ in range(2)])
        self.head = nn.Linear(24, 5)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h).mean(dim=1)


IDS = torch.tensor([[1, 7, 59, 3], [0, 19, 5, 5]])


def base(max_bond=None):
    """The same compressed base every call: seeded weights, a deterministic decomposition."""
    torch.manual_seed(0)
    model = Toy()
    mt.compress(model, include="blocks.*", n=3, max_bond=max_bond, progress=False, force=True)
    for p in model.parameters():
        p.requires_grad_(False)
    aux = [c for layer in mt.mpo_layers(model).values() for c in layer.auxiliary]
    for p in [*aux, *model.head.parameters()]:
        p.requires_grad_(True)
    return model


def train_a_little(model, seed):
    """Stand-in for fine-tuning: a seeded change to every trainable tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_adapter_holds_only_what_trained_and_restores_the_task_bit_for_bit(tmp_path):
    task = base()
    train_a_little(task, 1)
    info = mt.save_adapter(task, tmp_path / "a.safetensors", base="toy")
    trained = {n for n, p in task.named_parameters() if p.requires_grad}
    assert set(info.names) == trained
    central = {f"blocks.{b}.{k}.cores.1" for b in range(2) for k in (0, 2)}
    assert not central & set(info.names)  # the central tensors stay in the base
    assert info.num_params == sum(p.numel() for n, p in task.named_parameters() if n in trained)

    fresh = base()
    assert not torch.equal(fresh(IDS), task(IDS))
    mt.load_adapter(fresh, tmp_path / "a.safetensors")
    assert torch.equal(fresh(IDS), task(IDS))


def test_adapters_swap_on_one_base(tmp_path):
    tasks = []
    for seed in (1, 2):
        task = base()
        train_a_little(task, seed)
        mt.save_adapter(task, tmp_path / f"{seed}.safetensors")
        tasks.append(task(IDS))
    shared = base()
    for _ in range(2):  # back and forth on the same base
        for seed, want in zip((1, 2), tasks):
            mt.load_adapter(shared, tmp_path / f"{seed}.safetensors")
            assert torch.equal(shared(IDS), want)


def test_a_different_base_is_refused_and_left_untouched(tmp_path):
    task = base()
    train_a_little(task, 1)
    mt.save_adapter(task, tmp_path / "a.safetensors")
    other = base()
    with torch.no_grad():
        other.embed.weight.add_(1e-3)  # a frozen tensor differs: another base
    before = {n: t.clone() for n, t in other.state_dict().items()}
    with pytest.raises(ValueError, match="trained on another base"):
        mt.load_adapter(other, tmp_path / "a.safetensors")
    assert all(torch.equal(before[n], t) for n, t in other.state_dict().items())
    smaller = base(max_bond=4)  # other bonds: the auxiliary tensors have other shapes
    with pytest.raises(ValueError, match="compressed at other bonds"):
        mt.load_adapter(smaller, tmp_path / "a.safetensors")


def write_raw(path, header: dict, payload: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)


def test_bad_files_give_clear_errors(tmp_path):
    task = base()
    mt.save_adapter(task, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable adapter file"):
        mt.load_adapter(base(), tmp_path / "cut.safetensors")
    (tmp_path / "lies.safetensors").write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(ValueError, match="header claims"):
        mt.load_adapter(base(), tmp_path / "lies.safetensors")
    with pytest.raises(ValueError, match="cannot read the adapter"):
        mt.load_adapter(base(), tmp_path / "missing.safetensors")

    from safetensors.torch import save_file

    save_file({"head.bias": torch.zeros(5)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not an mpo adapter"):
        mt.load_adapter(base(), tmp_path / "plain.safetensors")

    manifest = {"format": "mpo.adapter", "format_version": 1, "base": "", "base_fingerprint": "0",
                "tensors": {"head.bias": [5]}, "dtypes": {"head.bias": "float32"}}
    save_file({"head.bias": torch.full((5,), float("nan"))}, tmp_path / "nan.safetensors",
              metadata={"mpo": json.dumps(manifest)})
    with pytest.raises(ValueError, match="NaN or inf"):
        mt.load_adapter(base(), tmp_path / "nan.safetensors")
    save_file({"head.bias": torch.zeros(5)}, tmp_path / "v9.safetensors",
              metadata={"mpo": json.dumps({**manifest, "format_version": 9})})
    with pytest.raises(ValueError, match="format version 9"):
        mt.load_adapter(base(), tmp_path / "v9.safetensors")
    save_file({"nope": torch.zeros(5)}, tmp_path / "names.safetensors",
              metadata={"mpo": json.dumps({**manifest, "tensors": {"nope": [5]}})})
    with pytest.raises(ValueError, match=r"the model has no tensors \['nope'\]"):
        mt.load_adapter(base(), tmp_path / "names.safetensors")


def test_save_adapter_input_errors(tmp_path):
    model = base()
    with pytest.raises(ValueError, match=r"\['nope'\] are not parameters or buffers"):
        mt.save_adapter(model, tmp_path / "x", names=["nope"])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to save"):
        mt.save_adapter(model, tmp_path / "x")
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        mt.save_adapter("model", tmp_path / "x")


def test_fingerprint_sees_every_byte_and_ignores_the_excluded():
    a, b = base(), base()
    assert mt.base_fingerprint(a) == mt.base_fingerprint(b)
    with torch.no_grad():
        b.head.bias[0] = torch.nextafter(b.head.bias[0], torch.tensor(1.0))
    assert mt.base_fingerprint(a) != mt.base_fingerprint(b)
    assert mt.base_fingerprint(a, exclude=["head.bias"]) == mt.base_fingerprint(b, exclude=["head.bias"])


# ----------------------------------------------------------------------------- central cuts


def squeeze_order(mpos, params):
    """The oracle: mpo.squeeze's own one-dimension steps (no fine-tuning) until the size fits."""
    current = dict(mpos)
    while sum(m.num_params for m in current.values()) > params:
        result = mpo.squeeze(current, lambda ms: None, lambda ms: 0.0, delta=1.0, max_steps=1)
        assert result.history, "no central bond left to cut"
        current = result.mpos
    return current


def test_cut_central_makes_squeezes_cuts_in_one_call():
    rng = np.random.default_rng(3)
    mpos = {k: mpo.decompose(rng.standard_normal(s) * w, n=3) for k, s, w in
            (("a", (24, 48), 1.0), ("b", (48, 24), 0.5), ("c", (36, 40), 2.0))}
    full = sum(m.num_params for m in mpos.values())
    for share in (0.8, 0.5):
        target = int(share * full)
        cut = mpo.cut_central(mpos, target)
        assert sum(m.num_params for m in cut.values()) <= target
        want = squeeze_order(mpos, target)
        assert {k: m.bond_dims for k, m in cut.items()} == {k: m.bond_dims for k, m in want.items()}
        for k in mpos:
            # Only central bonds move (n = 3: both bonds touch the central core).
            assert all(c <= f for c, f in zip(cut[k].bond_dims, mpos[k].bond_dims))


def test_cut_central_errors():
    m = mpo.decompose(np.eye(16), n=3)
    with pytest.raises(ValueError, match="cannot shrink below"):
        mpo.cut_central({"m": m}, 1)
    with pytest.raises(ValueError, match="params must be an integer >= 0"):
        mpo.cut_central({"m": m}, -1)
    with pytest.raises(TypeError, match=r"mpos\['m'\] must be an MPO"):
        mpo.cut_central({"m": np.eye(3)}, 10)


def test_squeeze_to_cuts_layers_in_place_and_keeps_what_trains():
    model = base()
    before = sum(layer.num_params for layer in mt.mpo_layers(model).values())
    changed = mt.squeeze_to(model, int(0.6 * before))
    layers = mt.mpo_layers(model)
    assert changed and all(layers[name].bond_dims == bonds for name, bonds in changed.items())
    assert sum(layer.num_params for layer in layers.values()) <= int(0.6 * before)
    for layer in layers.values():
        assert not layer.central.requires_grad and all(c.requires_grad for c in layer.auxiliary)
    with pytest.raises(ValueError, match=r"\['nope'\] are not MPO layers"):
        mt.squeeze_to(model, 10, layers=["nope"])
