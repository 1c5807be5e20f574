"""Profiles of ONNX models: latency per batch size and memory, per execution provider.

:func:`measure_profile` is what the registry runs at registration: ONNX Runtime
on the CPU provider with one intra-op thread (what an edge agent runs), p50 and
p95 of ``session.run`` at batch 1, 8 and 32, the process RSS growth from
loading and running the session, and the same on the CUDA provider when the
host has one. The placement engine turns these figures into service times.

Example:
    >>> profile = measure_profile(Path("counter.onnx").read_bytes())  # doctest: +SKIP
    >>> profile.provider("CPUExecutionProvider").at(1).p50_ms         # doctest: +SKIP
    0.0712
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.core._errors import MeshError
from mesh.models._export import (
    InvalidModelError,
    ModelSignature,
    load_checked,
    ort_session,
    signature_of,
)

__all__ = [
    "CPU",
    "CUDA",
    "LatencyStat",
    "ModelProfile",
    "ProfileError",
    "ProviderProfile",
    "measure_profile",
]

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProfileError(MeshError, RuntimeError):
    """A model could not be profiled for a reason other than the model (no onnxruntime; 503)."""

    http_status = 503


@dataclass(frozen=True, slots=True)
class LatencyStat:
    """Latency of one ``session.run`` at one batch size, in milliseconds."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    runs: int


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What a model costs on one ONNX Runtime execution provider.

    Attributes:
        provider: e.g. ``"CPUExecutionProvider"``.
        threads: intra-op threads of the session.
        latency: one entry per batch size measured.
        session_rss_delta_bytes: growth of the process RSS from loading the
            session and running every batch size (None where RSS is unreadable).
        load_ms: time to create the session.
    """

    provider: str
    threads: int
    latency: tuple[LatencyStat, ...]
    session_rss_delta_bytes: int | None
    load_ms: float

    def at(self, batch_size: int) -> LatencyStat | None:
        """The latency measured at ``batch_size``, if it was."""
        return next((s for s in self.latency if s.batch_size == batch_size), None)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A version's profile, measured at registration on the registering host."""

    size_bytes: int
    providers: tuple[ProviderProfile, ...]
    onnxruntime_version: str
    measured_at: float

    def provider(self, name: str = CPU) -> ProviderProfile | None:
        """The profile on one provider, if measured."""
        return next((p for p in self.providers if p.provider == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "size_bytes": self.size_bytes,
            "onnxruntime_version": self.onnxruntime_version,
            "measured_at": self.measured_at,
            "providers": [
                {
                    "provider": p.provider,
                    "threads": p.threads,
                    "session_rss_delta_bytes": p.session_rss_delta_bytes,
                    "load_ms": p.load_ms,
                    "latency": [
                        {
                            "batch_size": s.batch_size,
                            "p50_ms": s.p50_ms,
                            "p95_ms": s.p95_ms,
                            "runs": s.runs,
                        }
                        for s in p.latency
                    ],
                }
                for p in self.providers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            size_bytes=int(data["size_bytes"]),
            onnxruntime_version=str(data["onnxruntime_version"]),
            measured_at=float(data["measured_at"]),
            providers=tuple(
                ProviderProfile(
                    provider=p["provider"],
                    threads=int(p["threads"]),
                    session_rss_delta_bytes=p["session_rss_delta_bytes"],
                    load_ms=float(p["load_ms"]),
                    latency=tuple(LatencyStat(**s) for s in p["latency"]),
                )
                for p in data["providers"]
            ),
        )


def _rss_bytes() -> int | None:
    """The process's resident set size (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _feeds(signature: ModelSignature, batch_size: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    for spec in signature.inputs:
        shape = [
            batch_size
            if axis == 0 and not isinstance(dim, int)
            else (dim if isinstance(dim, int) else 1)
            for axis, dim in enumerate(spec.shape)
        ]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _profile_provider(
    data: bytes,
    signature: ModelSignature,
    provider: str,
    *,
    threads: int,
    batch_sizes: Sequence[int],
    budget_s: float,
    min_runs: int,
    max_runs: int,
) -> ProviderProfile:
    import numpy as np

    batch_dynamic = all(t.batch_dynamic for t in signature.inputs)
    if not batch_dynamic:
        first = signature.inputs[0].shape
        batch_sizes = [first[0] if first and isinstance(first[0], int) else 1]
    rss_before = _rss_bytes()
    started = time.perf_counter()
    session = ort_session(data, threads=threads, provider=provider)
    load_ms = (time.perf_counter() - started) * 1e3
    stats: list[LatencyStat] = []
    for batch_size in batch_sizes:
        feeds = _feeds(signature, batch_size)
        for _ in range(3):  # warm-up: first runs allocate
            session.run(None, feeds)
        samples: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(samples) < max_runs and (
            len(samples) < min_runs or time.perf_counter() < deadline
        ):
            t0 = time.perf_counter_ns()
            session.run(None, feeds)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        p50, p95 = np.percentile(np.asarray(samples), [50, 95])
        stats.append(
            LatencyStat(batch_size, round(float(p50), 4), round(float(p95), 4), len(samples))
        )
    rss_after = _rss_bytes()
    delta = None if rss_before is None or rss_after is None else max(0, rss_after - rss_before)
    del session
    return ProviderProfile(provider, threads, tuple(stats), delta, round(load_ms, 3))


def measure_profile(
    data: bytes,
    signature: ModelSignature | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: int = 1,
    budget_s: float = 0.25,
    min_runs: int = 10,
    max_runs: int = 2000,
) -> ModelProfile:
    """Measure an ONNX model with ONNX Runtime: CPU (``threads``), and CUDA when present.

    Inputs are generated from the signature (random floats, zeros otherwise;
    the batch axis set to each batch size, other symbolic axes to 1). A model
    whose batch axis is fixed is measured at that batch size only. Each batch
    size runs 3 warm-ups, then at least ``min_runs`` and until ``budget_s``.

    Raises:
        InvalidModelError: ONNX Runtime cannot load or run the model on the CPU.

    Example:
        >>> measure_profile(Path("m.onnx").read_bytes()).provider().at(1).p50_ms  # doctest: +SKIP
        0.0912
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ProfileError(
            f"profiling needs onnxruntime: pip install 'fogmesh[cloud]' ({exc})"
        ) from exc
    inputs = signature if signature is not None else signature_of(load_checked(data))

    def run(provider: str) -> ProviderProfile:
        return _profile_provider(
            data,
            inputs,
            provider,
            threads=threads,
            batch_sizes=batch_sizes,
            budget_s=budget_s,
            min_runs=min_runs,
            max_runs=max_runs,
        )

    try:
        providers = [run(CPU)]
    except Exception as exc:  # ORT raises its own types (Fail, InvalidArgument, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"ONNX Runtime cannot load or run the model: {first}") from exc
    if CUDA in ort.get_available_providers():
        try:
            providers.append(run(CUDA))
        except Exception as exc:  # a broken CUDA setup must not block registration
            logger.warning("profiling on %s failed, CPU profile only: %s", CUDA, exc)
    return ModelProfile(
        size_bytes=len(data),
        providers=tuple(providers),
        onnxruntime_version=str(ort.__version__),
        measured_at=time.time(),
    )
