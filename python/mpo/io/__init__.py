"""Files: one registry of versioned formats (``_formats``) and one atomic writer (``atomic_path``).

This package knows files and arrays, not MPOs: an MPO goes in and out through its array form
(``MPO.to_arrays`` / ``MPO.from_arrays``), so the value class can save itself without a cycle.

- ``_formats``: the format registry (tags, versions, the version check).
- ``_atomic``: write to a temporary file in the same folder, rename into place.
- ``_archive``: ``mpo.MPO``, one MPO as an .npz (``MPO.save`` / ``mpo.load``).
- ``_checkpoint``: ``mpo.checkpoint``, a compressed checkpoint (the ``mpo`` command).
- ``_tensors``: plain checkpoints (.safetensors, .npz, PyTorch) read and written as NumPy arrays.

``mpo.torch.save`` / ``load`` tag their payload with ``TORCH_MODEL`` and write through ``atomic_path``.
"""

from ._archive import read_archive, write_archive
from ._atomic import atomic_path
from ._checkpoint import SEP, read_checkpoint, write_checkpoint
from ._formats import CHECKPOINT, FORMAT_VERSION, FORMATS, MPO_ARCHIVE, TORCH_MODEL, Format, mpo_archive_version
from ._tensors import read_tensors, write_tensors

__all__ = [
    "Format",
    "FORMATS",
    "FORMAT_VERSION",
    "MPO_ARCHIVE",
    "CHECKPOINT",
    "TORCH_MODEL",
    "SEP",
    "atomic_path",
    "mpo_archive_version",
    "read_archive",
    "write_archive",
    "read_checkpoint",
    "write_checkpoint",
    "read_tensors",
    "write_tensors",
]
