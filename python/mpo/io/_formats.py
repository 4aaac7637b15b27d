"""The registry of every file format mpo writes: its tag, the versions this mpo reads, and the check.

A reader meets a file from anywhere, so the tag and version are checked before any content is
trusted; a version this mpo does not know is refused with both numbers named, never read half-way.

- ``mpo.MPO`` (``MPO.save`` / ``mpo.load``): an .npz archive of one MPO's arrays. Version 1 is a plain
  MPO; version 2 adds a row-weighted MPO's row scale and plain spectra, so that a reader knowing only
  version 1 refuses it instead of silently dropping the scale.
- ``mpo.checkpoint`` (``mpo compress`` / ``inspect`` / ``rebuild``): a safetensors file whose metadata
  names the format; every compressed matrix is stored as its MPO arrays under a prefix.
- ``mpo.torch`` (``mpo.torch.save`` / ``load``): a ``torch.save`` payload whose "format" entry is
  ``mpo.torch/1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Format", "FORMATS", "MPO_ARCHIVE", "CHECKPOINT", "TORCH_MODEL", "FORMAT_VERSION", "mpo_archive_version"]


@dataclass(frozen=True)
class Format:
    """One file format: ``kind`` is the tag written into the file, ``versions`` those this mpo reads."""

    kind: str
    versions: tuple[int, ...]
    title: str
    """How messages name the format."""

    def tag(self, version: int | None = None) -> str:
        """``kind/version``: the single-string tag of formats that store tag and version together."""
        return f"{self.kind}/{self.versions[-1] if version is None else version}"

    def check_version(self, version: object, source: str) -> int:
        """``version`` as an int when this mpo reads it, else ValueError naming both."""
        try:
            number = int(str(version))
        except ValueError:
            number = None
        if number is None or number not in self.versions:
            known = " and ".join(str(v) for v in self.versions)
            plural = "s" if len(self.versions) > 1 else ""
            raise ValueError(
                f"{source} has {self.title} format version {version}; this mpo reads version{plural} {known}"
            )
        return number


MPO_ARCHIVE = Format("mpo.MPO", (1, 2), "MPO")
CHECKPOINT = Format("mpo.checkpoint", (1,), "mpo checkpoint")
TORCH_MODEL = Format("mpo.torch", (1,), "mpo.torch model")

#: Every format by its tag.
FORMATS: dict[str, Format] = {f.kind: f for f in (MPO_ARCHIVE, CHECKPOINT, TORCH_MODEL)}

#: The version of a plain MPO's archive (``mpo.FORMAT_VERSION``).
FORMAT_VERSION = MPO_ARCHIVE.versions[0]


def mpo_archive_version(arrays: Mapping[str, object]) -> int:
    """The version an MPO's arrays are written in: 1, or 2 when they hold a row scale (a version-1
    reader would silently drop it and the plain spectra)."""
    return MPO_ARCHIVE.versions[1] if "row_scale" in arrays else MPO_ARCHIVE.versions[0]
