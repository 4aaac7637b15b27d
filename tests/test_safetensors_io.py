"""mpo.io._safetensors against the safetensors package: files written by either are read by the other
bit-exactly (bfloat16 included), and every malformed header is refused with a message naming the rule."""

import json
import os
import struct

import numpy as np
import pytest

from mpo.io import _safetensors as st

ml_dtypes = pytest.importorskip("ml_dtypes")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def sample():
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((7, 5)).astype(np.float32)
    return {
        "w.bf16": f32.astype(ml_dtypes.bfloat16),
        "w.f16": f32.astype(np.float16),
        "w.f32": f32,
        "w.f64": rng.standard_normal((3, 4, 2)),
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
        "mask": np.array([True, False, True]),
        "u8": np.arange(5, dtype=np.uint8),
        "i32": np.array([-1, 2**31 - 1], dtype=np.int32),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        # bfloat16 NaN payloads and signed zero must survive: compare bits, not values.
        "special": np.array([0x7FC1, 0x8000, 0xFF80, 0x0001], dtype=np.uint16).view(ml_dtypes.bfloat16),
    }


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def assert_same(got, want):
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert bits(got[name]) == bits(want[name]), name


def test_round_trip_own_writer_and_reader(tmp_path):
    path = tmp_path / "a.safetensors"
    st.save_file(path, sample(), metadata={"format": "pt", "note": "x"})
    metadata, infos = st.read_header(path)
    assert metadata == {"format": "pt", "note": "x"}
    assert_same(st.load_file(path), sample())
    assert {t.name: t.dtype for t in infos}["w.bf16"] == "BF16"


# The safetensors package's NumPy API has no bfloat16, so its torch API writes and reads the bf16 side.
def test_read_files_written_by_the_safetensors_package(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    want = sample()
    tensors = {}
    for name, a in want.items():
        if a.dtype == ml_dtypes.bfloat16:
            tensors[name] = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        else:
            tensors[name] = torch.from_numpy(a.copy())
    path = tmp_path / "theirs.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    assert_same(st.load_file(path), want)


def test_the_safetensors_package_reads_our_files(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    want = sample()
    path = tmp_path / "ours.safetensors"
    st.save_file(path, want)
    got = load_file(str(path))
    for name, a in want.items():
        t = got[name]
        if a.dtype == ml_dtypes.bfloat16:
            assert t.dtype == torch.bfloat16
            assert bits(t.view(torch.int16).numpy()) == bits(a), name
        else:
            assert bits(t.numpy()) == bits(a), name


def test_header_larger_than_the_reserve_moves_the_data_once(tmp_path):
    path = tmp_path / "many.safetensors"
    arrays = {f"t{k:04d}." + "x" * 40: np.full(3, k, dtype=np.float32) for k in range(600)}
    with st.SafetensorsWriter(path, reserve=64) as w:
        for name, a in arrays.items():
            w.add(name, a)
    assert_same(st.load_file(path), arrays)
    assert safetensors_numpy.load_file(str(path)).keys() == arrays.keys()


def test_writer_is_atomic_and_gets_the_umask_mode(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(RuntimeError):
        with st.SafetensorsWriter(path) as w:
            w.add("a", np.ones(3, dtype=np.float32))
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []
    old = os.umask(0o022)
    try:
        st.save_file(path, {"a": np.ones(2, dtype=np.float32)})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_reader_reads_one_tensor_at_a_time(tmp_path):
    path = tmp_path / "a.safetensors"
    st.save_file(path, sample())
    with st.SafetensorsReader(path) as r:
        assert r.names[0] == "w.bf16"  # data order = insertion order
        assert bits(r.read("ids")) == bits(sample()["ids"])
        with pytest.raises(KeyError, match="no tensor 'nope'"):
            r.read("nope")


def forge(path, header, data=b"", length=None):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        (b"", b"", None, "the header length 0"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, 10**6, "does not fit"),
        (b"[1, 2]", b"", None, "not an object"),
        (b"{nope", b"", None, "not UTF-8 JSON"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], '
         b'"data_offsets": [0, 4]}}', b"\0" * 4, None, "appears twice"),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "dtype 'C64'"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "not a list of non-negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 400]}}, b"\0" * 8, None, "outside the 8 data bytes"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "hold 8 bytes"),
        ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, None, "hold 8 bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "overlaps"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "hole of 4 bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, None, "end at byte 4"),
        ({"__metadata__": {"k": 1}}, b"", None, "__metadata__ must map strings"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"", None, "exactly dtype, shape and data_offsets"),
    ],
)
def test_malformed_headers_are_refused(tmp_path, header, data, length, message):
    path = tmp_path / "bad.safetensors"
    forge(path, header, data, length)
    with pytest.raises(ValueError, match="not a valid safetensors file") as info:
        st.read_header(path)
    assert message in str(info.value)


def test_too_short_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\2")
    with pytest.raises(ValueError, match="fewer than the 8"):
        st.SafetensorsReader(path)


def test_dtype_codes():
    assert st.dtype_code(ml_dtypes.bfloat16) == "BF16"
    assert st.dtype_code(np.dtype(">f4")) == "F32"
    assert st.numpy_dtype("F16") == np.float16
    with pytest.raises(TypeError, match="complex64 has no safetensors code"):
        st.dtype_code(np.complex64)
