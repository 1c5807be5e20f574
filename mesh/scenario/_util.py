"""Small helpers of the scenario runner: KPIs, link lookup, references, environment."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mesh.core._errors import MeshError
from mesh.scenario._faults import parse_target
from mesh.scenario._linkem import LinkShape
from mesh.scenario._nodes import Link

__all__ = [
    "environment",
    "link_shape",
    "on_path",
    "quietly",
    "resolve",
    "summarise",
]

logger = logging.getLogger(__name__)


def link_shape(links: list[Link], a: str, b: str) -> LinkShape:
    """The declared link between two endpoints (most specific first), or no delay."""
    best: tuple[int, Link] | None = None
    for link in links:
        for x, y in ((link.from_, link.to), (link.to, link.from_)):
            if _endpoint_matches(x, a) and _endpoint_matches(y, b):
                rank = _specificity(x) + _specificity(y)
                if best is None or rank > best[0]:
                    best = (rank, link)
    if best is None:
        return LinkShape()
    link = best[1]
    rate = link.bandwidth_mbps * 1000 if link.bandwidth_mbps else None
    return LinkShape(delay_ms=link.delay_ms, jitter_ms=link.jitter_ms, rate_kbps=rate)


def _endpoint_matches(decl: str, endpoint: str) -> bool:
    kind, name = parse_target(endpoint) if ":" in endpoint else ("tier", endpoint)
    return decl in (endpoint, name) or (kind == "agent" and decl == "edge")


def _specificity(decl: str) -> int:
    return 0 if decl in ("edge", "fog", "cloud") else 1


def resolve(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise MeshError(f"{ref} is not callable")
    return fn  # type: ignore[no-any-return]


def summarise(value: Any) -> str:
    if isinstance(value, dict):
        if "model" in value and "metrics" in value:
            metrics = ", ".join(f"{k}={v:.3g}" for k, v in value["metrics"].items())
            return f"{value['model']} ({metrics}) → {Path(str(value.get('onnx_path'))).name}"
        return json.dumps(value, default=str)[:160]
    for attr in ("best_config", "num_rows"):
        if hasattr(value, attr):
            return f"{attr}={getattr(value, attr)}"
    return str(value)[:160]


def quietly(what: str, stop: Callable[[], object]) -> Callable[[], None]:
    def call() -> None:
        try:
            stop()
        except Exception:
            logger.exception("stopping %s failed", what)

    return call


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def on_path(path: Path) -> Iterator[None]:
    entry = str(path)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)
