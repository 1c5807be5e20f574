"""The assignment engine's shared state: candidates read by rank position, and replica memory.

:class:`RankedState` holds each demand's candidate arrays in the policy's order,
so every step of :func:`placement._greedy.assign` (repair, fill, exchange) reads
``x(d, pos)`` for a demand's ``pos``-th choice. :func:`pair_counts` and
:func:`replica_memory` count replicas per (node, module) in dense arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._problem import Problem

__all__ = ["EPS_RHO", "RankedState", "pair_counts", "replica_memory"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

EPS_RHO = 1e-9
"""Utilisation slack kept below every cap: cumulative sums over 10^5 loads drift ~1e-12."""


class RankedState:
    """Candidate arrays read by rank position: ``x(d, pos)`` is ``x[d, order[d, pos]]``."""

    __slots__ = ("_cap", "_key", "_load", "_node", "_pin", "n_fit", "order", "problem", "sticky")

    def __init__(
        self,
        problem: Problem,
        order: IntArray,
        node: IntArray,
        load: FloatArray,
        cap: FloatArray,
        key: FloatArray,
        pin: BoolArray,
        n_fit: IntArray,
    ) -> None:
        self.problem = problem
        self.order = order
        self._node, self._load, self._cap, self._key, self._pin = node, load, cap, key, pin
        self.n_fit = n_fit
        self.sticky = False  # residents keep their place before newcomers (hysteresis)

    def node(self, d: IntArray, pos: IntArray) -> IntArray:
        """The node of each demand's candidate at ``pos``."""
        out: IntArray = self._node[d, self.order[d, pos]]
        return out

    def load(self, d: IntArray, pos: IntArray) -> FloatArray:
        """The utilisation each demand adds there."""
        out: FloatArray = self._load[d, self.order[d, pos]]
        return out

    def cap(self, d: IntArray, pos: IntArray) -> FloatArray:
        """The utilisation the node may reach with the demand there."""
        out: FloatArray = self._cap[d, self.order[d, pos]]
        return out

    def key(self, d: IntArray, pos: IntArray) -> FloatArray:
        """The policy's ranking key there (lower is better)."""
        out: FloatArray = self._key[d, self.order[d, pos]]
        return out

    def pin(self, d: IntArray, pos: IntArray) -> BoolArray:
        """Whether the candidate there is the demand's pinned incumbent."""
        out: BoolArray = self._pin[d, self.order[d, pos]]
        return out


def pair_counts(keys: IntArray, size: int) -> IntArray:
    """How many times each dense key in ``0..size-1`` occurs."""
    counts = np.zeros(size, dtype=np.int64)
    np.add.at(counts, keys, 1)
    return counts


def replica_memory(present: BoolArray, module_memory: FloatArray) -> FloatArray:
    """Memory per node of the replicas marked in a dense (node, module) mask."""
    if len(module_memory) == 0:
        return np.zeros(0)
    out: FloatArray = present.reshape(-1, len(module_memory)) @ module_memory
    return out
