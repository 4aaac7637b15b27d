"""The unfinished part of a ``compress_checkpoint`` run, kept inside its output folder so a rerun resumes.

A run decomposes the chosen matrices one task at a time (in this process or on Dask workers) and only
at the end assembles the output shards, the index and the manifest, in source order, into a fresh folder
that replaces the output folder in one rename. Until then the output folder holds::

    OUT/.mpo-partial/progress.json          what the run is (plan) and which matrices are finished
    OUT/.mpo-partial/m-00042.safetensors    one finished matrix: its cores and its record

What "finished" means, so that nothing half-written is ever taken for it:

- a matrix file is written atomically (temporary name, then rename), and only then is its name added
  to progress.json, itself rewritten atomically: a run killed between the two recomputes the matrix;
- a matrix is finished only when progress.json lists it *and* its file's header names the same tensor
  and the same plan digest (a file from another run, or one copied in, is refused);
- the output shards exist only after every matrix is finished, and the manifest (what marks a folder
  as a compressed model) is the last file of the fresh folder; a run killed while assembling left only
  temporary files beside OUT, and its rerun assembles again from the matrix files.

The plan is the source (its absolute path, and each shard's name, size and modification time), the
settings and the list of tensors to decompose. A rerun with another plan is refused with the field that
differs: finishing it would mix matrices of two settings in one model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence

import numpy as np

from ._atomic import atomic_path
from ._safetensors import SafetensorsReader, SafetensorsWriter

__all__ = ["WORK", "PROGRESS", "PROGRESS_FORMAT", "PROGRESS_VERSION", "WorkFolder", "source_fingerprint",
           "plan_digest"]

#: The work folder inside an output folder (hidden: it is not part of the model).
WORK = ".mpo-partial"
PROGRESS = "progress.json"
PROGRESS_FORMAT = "mpo.compress-progress"
PROGRESS_VERSION = 1
_PLAN_KEYS = ("source", "files", "settings", "tensors")


def source_fingerprint(files: Sequence[str]) -> list[list]:
    """[name, size, mtime_ns] of every source file: a shard rewritten since the run started changes it."""
    out = []
    for path in files:
        st = os.stat(path)
        out.append([os.path.basename(path), int(st.st_size), int(st.st_mtime_ns)])
    return out


def plan_digest(plan: Mapping) -> str:
    """SHA-256 of the plan's canonical JSON: stamped into every matrix file of the run."""
    text = json.dumps({k: plan[k] for k in _PLAN_KEYS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class WorkFolder:
    """The work folder of one run inside ``out``: opened (created, or validated and resumed) by
    :meth:`open`, filled by :meth:`save`, read back by :meth:`load`, deleted by :meth:`remove`.

    ``plan`` is a dict with the keys source, files (:func:`source_fingerprint`), settings and tensors
    (the names to decompose, in order); ``finished`` maps each finished tensor name to its file.
    """

    def __init__(self, out: str, plan: Mapping, finished: dict[str, str], created_out: bool) -> None:
        self.out = out
        self.path = os.path.join(out, WORK)
        self.plan = {k: plan[k] for k in _PLAN_KEYS}
        self.digest = plan_digest(self.plan)
        self.finished = finished
        self.created_out = created_out
        self._index = {name: k for k, name in enumerate(self.plan["tensors"])}

    @classmethod
    def open(cls, out: str, plan: Mapping) -> WorkFolder:
        """The work folder of ``plan`` in ``out``: a new one, or the one an interrupted run of the same
        plan left (ValueError naming what differs when it was another plan, or the file is damaged)."""
        plan = json.loads(json.dumps({k: plan[k] for k in _PLAN_KEYS}))  # the JSON form, as it is stored
        created_out = not os.path.exists(out)
        work = os.path.join(out, WORK)
        progress = os.path.join(work, PROGRESS)
        if os.path.isfile(progress):
            folder = cls(out, plan, {}, created_out)
            folder.finished = folder._read_progress(progress)
            return folder
        os.makedirs(work, exist_ok=True)
        folder = cls(out, plan, {}, created_out)
        folder._write_progress()
        return folder

    def _bad(self, rule: str) -> ValueError:
        return ValueError(f"{os.path.join(self.path, PROGRESS)!r}: {rule}; remove the folder {self.path!r} to "
                          "start this run over")

    def _read_progress(self, path: str) -> dict[str, str]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._bad(f"not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT:
            raise self._bad(f"not an mpo progress file (format {PROGRESS_FORMAT!r} expected)")
        if data.get("format_version") != PROGRESS_VERSION:
            raise self._bad(f"format version {data.get('format_version')!r}; this mpo reads version {PROGRESS_VERSION}")
        names = {"source": "source", "files": "source files (a shard was rewritten since)", "settings": "settings",
                 "tensors": "list of matrices to compress"}
        for key in _PLAN_KEYS:
            if data.get(key) != self.plan[key]:
                raise ValueError(
                    f"the output folder {self.out!r} holds an unfinished run with other {names[key]}: "
                    f"{_short(data.get(key))} there, {_short(self.plan[key])} now. Rerun that run's command to "
                    f"finish it, or remove {self.path!r} to start over"
                )
        finished = data.get("finished")
        if not isinstance(finished, dict):
            raise self._bad("'finished' must be an object of tensor name -> file")
        for name, file in finished.items():
            if name not in self._index:
                raise self._bad(f"it lists {name!r} as finished, but that tensor is not in the plan")
            if file != _file_name(self._index[name]):
                raise self._bad(f"it puts {name!r} in {file!r}, not {_file_name(self._index[name])!r}")
        # A listed file that has gone missing is recomputed, not trusted and not fatal.
        return {name: file for name, file in finished.items() if os.path.isfile(os.path.join(self.path, file))}

    def _write_progress(self) -> None:
        data = {"format": PROGRESS_FORMAT, "format_version": PROGRESS_VERSION, **self.plan,
                "digest": self.digest, "finished": self.finished}
        with atomic_path(os.path.join(self.path, PROGRESS)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")

    def save(self, name: str, cores: Sequence[np.ndarray], record: Mapping) -> None:
        """Record ``name`` as finished: its cores and its record (JSON-able) in its own file, atomically,
        then the name in progress.json."""
        file = _file_name(self._index[name])
        meta = {"tensor": name, "digest": self.digest, "record": json.dumps(record)}
        with SafetensorsWriter(os.path.join(self.path, file), meta) as w:
            for k, core in enumerate(cores):
                w.add(f"cores.{k}", core)
        self.finished[name] = file
        self._write_progress()

    def load(self, name: str) -> tuple[list[np.ndarray], dict]:
        """(cores, record) of the finished matrix ``name``, checked to belong to this run."""
        path = os.path.join(self.path, self.finished[name])
        with SafetensorsReader(path) as r:
            meta = r.metadata
            if meta.get("tensor") != name or meta.get("digest") != self.digest:
                raise ValueError(f"{path!r} holds {meta.get('tensor')!r} of another run, not {name!r} of this one; "
                                 f"remove the folder {self.path!r} to start this run over")
            try:
                record = json.loads(meta.get("record", ""))
            except ValueError:
                raise ValueError(f"{path!r}: its record is not valid JSON; remove {self.path!r} to start over") from None
            count = len(r.names)
            if r.names != [f"cores.{k}" for k in range(count)] or not isinstance(record, dict):
                raise ValueError(f"{path!r} does not hold cores.0 ... cores.{count - 1} and a record")
            shapes = [r.info(f"cores.{k}").shape for k in range(count)]
            if shapes != _core_shapes(record.get("entry")):
                raise ValueError(f"{path!r}: the cores have shapes {shapes}, not those its record describes; remove "
                                 f"{self.path!r} to start over")
            return [r.read(f"cores.{k}") for k in range(count)], record

    def remove(self) -> None:
        """Delete the work folder (and ``out`` when this run created it and it is empty now)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.created_out:
            try:
                os.rmdir(self.out)
            except OSError:
                pass


def _core_shapes(entry) -> list[tuple[int, ...]]:
    """The core shapes (d_{k-1}, i_k, j_k, d_k) a manifest entry describes; [] for none (a dense matrix)."""
    if entry is None:
        return []
    try:
        bonds = [1, *entry["bonds"], 1]
        ins, outs = entry["in_factors"], entry["out_factors"]
        if len(ins) != len(outs) or len(bonds) != len(ins) + 1:
            return [(-1,)]
        shapes: list[tuple[int, ...]] = [(int(bonds[k]), int(i), int(j), int(bonds[k + 1]))
                                         for k, (i, j) in enumerate(zip(ins, outs))]
        if entry.get("row_scale") is not None:  # an activation-scaled fit stores its row scale after the cores
            shapes.append((int(entry["shape"][0]),))
        return shapes
    except (KeyError, TypeError, ValueError, IndexError):
        return [(-1,)]  # a damaged record matches no cores


def _file_name(index: int) -> str:
    return f"m-{index:05d}.safetensors"


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:200] + " ..."
