"""Inference from the test bed's ``client`` host through the gateway, with tritonclient.

:func:`infer_from_client` runs a short script in ``client`` (its own process in
that namespace, so every request crosses the bed's links as a remote user's
would) and returns each request's time and the last answer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from tests.support.testbed import TestBed

__all__ = ["ClientRun", "client_input", "infer_from_client"]

#: The input every client request sends (the counter's [N, 1, 32, 32]).
SEED, SHAPE = 5, (2, 1, 32, 32)

_INFER = """
import json, sys, time
import numpy as np
import tritonclient.http as triton

url, token, model, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seed, shape = int(sys.argv[5]), tuple(int(n) for n in sys.argv[6].split(","))
name = sys.argv[7]
x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
client = triton.InferenceServerClient(url=url, network_timeout=60.0)
inp = triton.InferInput(name, list(x.shape), "FP32")
inp.set_data_from_numpy(x)
ms, out = [], None
for _ in range(count):
    t0 = time.perf_counter()
    result = client.infer(model, [inp], headers={"Authorization": f"Bearer {token}"})
    ms.append((time.perf_counter() - t0) * 1000.0)
    out = result.as_numpy(result.get_response()["outputs"][0]["name"])
client.close()
print(json.dumps({"ms": ms, "out": out.tolist()}))
"""


@dataclass(frozen=True)
class ClientRun:
    """What the client saw: each request's milliseconds and the last answer."""

    ms: list[float]
    out: np.ndarray


def client_input(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """The tensor the client sends (of ``shape``), to compare answers with ONNX Runtime's."""
    return np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)


def infer_from_client(
    bed: TestBed,
    gateway_url: str,
    token: str,
    model: str,
    count: int,
    *,
    timeout_s: float = 120,
    input_name: str = "input",
    shape: tuple[int, ...] = SHAPE,
) -> ClientRun:
    """``count`` requests, one at a time, from ``client`` to ``model`` through the gateway.

    Each sends :func:`client_input` of ``shape`` as the FP32 input ``input_name``
    (the defaults fit tests/support/agent_fixtures.py's CNN).

    Raises:
        AssertionError: the script failed (any request did), with its output.
    """
    dims = ",".join(str(n) for n in shape)
    done = bed.run(
        "client",
        [sys.executable, "-c", _INFER, gateway_url.removeprefix("http://"), token, model,
         str(count), str(SEED), dims, input_name],
        timeout_s=timeout_s,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return ClientRun([float(m) for m in answer["ms"]], np.array(answer["out"]))
