"""Typed primitives of the C++ core. Private: use the mpo package."""

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

class DecomposeResult(TypedDict):
    """What ``decompose`` returns: the sweep's cores, every bond's spectrum, eps_k per bond, which bonds
    the max_bond cut, ||M||_F, and whether a randomized range finder was used."""

    cores: list[npt.NDArray[np.floating[Any]]]
    spectra: list[npt.NDArray[np.float64]]
    truncation_errors: npt.NDArray[np.float64]
    cut: list[bool]
    norm: float
    randomized: bool

def decompose(
    matrix: npt.NDArray[np.floating[Any]],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    max_bond: Sequence[int],
    allow_randomized: bool = True,
    allow_block: bool = True,
    allow_whole: bool = True,
    allow_rescale: bool = True,
    allow_float32_gram: bool = True,
    allow_k_vector: bool = True,
) -> DecomposeResult: ...
class Sweep:
    """Algorithm 1 under any per-bond max_bond, scored exactly (budget mode's scorer, float32 or float64)."""

    # An ndarray, float32 or float64 (as for decompose: the binding converts no nested lists).
    def __init__(
        self,
        matrix: npt.NDArray[np.floating[Any]],
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        unit: float = 1.0,
        values_only: bool = True,
        reuse_bound: bool = True,
        kept_vectors: bool = True,
        shared_rows: bool = True,
        float32_gram: bool = True,
        right_from_gram: bool = True,
    ) -> None: ...
    @property
    def shortcuts_taken(self) -> dict[str, int]: ...
    @property
    def steps(self) -> list[int]: ...
    @property
    def energy(self) -> float: ...
    @property
    def work(self) -> float: ...
    def evaluate(self, max_bond: Sequence[int]) -> tuple[list[int], float]: ...
    def build(self, max_bond: Sequence[int]) -> DecomposeResult: ...
    def forget_all_but(self, max_bond: Sequence[int]) -> None: ...
    def last_left_rows(self, max_bond: Sequence[int]) -> npt.NDArray[np.floating[Any]]: ...
    def last_left_count(self, max_bond: Sequence[int]) -> int: ...
    def central_reference(
        self, max_bond: Sequence[int], side: int, b: int, count: int = 0
    ) -> npt.NDArray[np.float64]: ...
    def central_bound(self, lo: int, hi: int, used: int) -> npt.NDArray[np.float64]: ...
    def central_probe(self, b: int) -> npt.NDArray[np.float64]: ...

def canonicalize(
    cores: list[npt.NDArray[np.floating[Any]]], dtype: str
) -> tuple[list[npt.NDArray[np.floating[Any]]], list[npt.NDArray[np.float64]]]: ...
def order_bonds(
    cores: list[npt.NDArray[np.floating[Any]]], dtype: str
) -> tuple[list[npt.NDArray[np.floating[Any]]], list[npt.NDArray[np.float64]]]: ...
def symmetric_eigen(
    a: npt.ArrayLike, count: int, route: str = "auto"
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], str] | None: ...
def rebuild(cores: list[npt.NDArray[np.floating[Any]]], dtype: str) -> npt.NDArray[np.floating[Any]]: ...
def entropy(spectrum: npt.ArrayLike) -> float: ...
def error_bound(truncation_errors: Sequence[float] | npt.NDArray[np.floating[Any]]) -> float: ...
def apply(
    cores: list[npt.NDArray[np.floating[Any]]],
    transposed: bool,
    x: npt.NDArray[np.floating[Any]],
    batch_last: bool,
    out_width: int,
    plan: str = "auto",
    merge: bool = True,
) -> npt.NDArray[np.floating[Any]]: ...
def rows(
    cores: list[npt.NDArray[np.floating[Any]]],
    transposed: bool,
    ids: npt.ArrayLike,
    out_width: int,
    dtype: str,
) -> npt.NDArray[np.floating[Any]]: ...
def apply_plan(
    core_shapes: Sequence[Sequence[int]], batch: int, transposed: bool, plan: str = "auto", merge: bool = True
) -> tuple[str, list[int], float, list[int], float]: ...
def multiply_out(cores: list[npt.NDArray[np.floating[Any]]], dtype: str) -> npt.NDArray[np.floating[Any]]: ...
def set_runtime_gemm(sgemm: object, dgemm: object) -> None: ...
def has_runtime_gemm() -> bool: ...
def runtime_gemm_calls() -> int: ...
def kernel_threads() -> int: ...
