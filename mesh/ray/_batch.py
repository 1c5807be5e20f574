"""Ray Data batch jobs: resolve the input files, read them, apply the function, write Parquet.

:func:`batch_once` runs one attempt in a job thread of
:class:`~mesh.ray._jobs.JobRunner`: the dataset it builds carries the tier's
label selector on every task (reads, maps, shuffles, writes) within the
tier's CPUs, and the output is written batch by batch, so a stop request
takes effect at the next batch.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import exceptions as ray_exceptions

from mesh.core._errors import InvalidArgumentsError, MeshError, RemoteFunctionError
from mesh.ray._calls import JobStopped, local_error, remote_error, system_error
from mesh.ray._remote import label_selector, read_resources
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import BatchSpec

__all__ = ["batch_once", "input_paths"]


def input_paths(spec: BatchSpec, value: Any, signature: str) -> list[str]:
    """The files ``input=`` names (a path, a glob, a URI or a list of them).

    Raises:
        InvalidArgumentsError: ``input`` is missing or matches no file.
    """
    if value is None:
        raise InvalidArgumentsError(
            spec.name,
            [f"missing required argument 'input' (a {spec.input_format} file, directory or glob)"],
            signature,
        )
    items = [value] if isinstance(value, str | os.PathLike) else list(value)
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if "://" in text:  # a remote filesystem URI: Ray Data resolves it
            paths.append(text)
            continue
        matches = sorted(glob.glob(os.path.expanduser(text)))
        if not matches:
            raise InvalidArgumentsError(spec.name, [f"input={text!r} matches no file"], signature)
        paths.extend(os.path.abspath(m) for m in matches)
    return paths


def batch_once(
    fn: RegisteredFunction,
    spec: BatchSpec,
    paths: list[str],
    extra: Mapping[str, Any],
    out_dir: Path,
    cpu_limit: float,
    stop: threading.Event,
    run_id: str,
) -> tuple[int, list[str]]:
    """Read ``paths``, apply ``fn`` and write its rows under ``out_dir``; (rows, columns)."""
    import pyarrow.parquet as pq
    import ray.data

    read = ray.data.read_csv if spec.input_format == "csv" else ray.data.read_parquet
    try:
        source = read(paths, **read_resources(spec))
        out = fn.fn(source, **extra)
    except ray_exceptions.RayTaskError as exc:
        raise remote_error(exc, function=spec.name, run_id=run_id) from exc
    except Exception as exc:
        raise local_error(exc, spec.name, run_id) from exc
    if not isinstance(out, ray.data.Dataset):
        raise RemoteFunctionError(
            function=spec.name,
            run_id=run_id,
            remote_type="TypeError",
            remote_message=f"a batch function must return a ray.data.Dataset, "
            f"got {type(out).__name__}",
            remote_traceback="",
        )
    ctx = out.context
    # Everything this dataset launches carries the tier's selector, within the tier's CPUs.
    ctx.execution_options.label_selector = label_selector(spec)
    if cpu_limit > 0:
        ctx.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
            cpu=cpu_limit
        )
    # The default shuffle spins up aggregator actors that stall on a couple of CPUs
    # (ray#57979); the pull-based sort shuffle runs as plain tasks.
    ctx.shuffle_strategy = "sort_shuffle_pull_based"
    ctx.enable_progress_bars = False
    if out_dir.exists():
        for stale in out_dir.glob("part-*.parquet"):
            stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, columns, part = 0, None, 0
    try:
        table: Any
        for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            if stop.is_set():
                raise JobStopped
            if table.num_rows == 0 and part > 0:
                continue
            pq.write_table(table, out_dir / f"part-{part:05d}.parquet")
            part += 1
            rows += table.num_rows
            if columns is None:
                columns = list(table.column_names)
        if columns is None:
            schema = out.schema()
            columns = list(schema.names) if schema is not None else []
    except (JobStopped, MeshError):
        raise
    except ray_exceptions.RayTaskError as exc:
        raise remote_error(exc, function=spec.name, run_id=run_id) from exc
    except ray_exceptions.RayError as exc:
        raise system_error(exc, function=spec.name, run_id=run_id, retries=spec.retries) from exc
    except Exception as exc:
        raise local_error(exc, spec.name, run_id) from exc
    return rows, columns
