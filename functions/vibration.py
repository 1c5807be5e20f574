"""Machine vibration monitoring: a small use case with no simulation at all.

Each machine's edge agent replays recorded accelerometer windows from a file
(``source: {kind: file}``) through an ONNX model that takes their RMS level;
a fog stream function raises an alarm for a machine whose level stays over a
threshold. ``scenarios/vibration.yaml`` runs it, with a fault, on the mesh's
scenario harness alone — it shows that the harness needs no simulation plugin.

* ``build_scorer`` (cloud): writes the RMS model as ONNX (``onnx.helper``, no
  training) and returns it for the registry;
* ``record_vibration`` (cloud): writes one replay file per machine: noise,
  with a bearing fault (a louder band) in the middle of one machine's record;
* ``alarms`` (fog stream): windows of RMS levels -> alarms.

Example:
    >>> alarms([{"site": "m1", "outputs": {"rms": [2.5]}, "ts": 1.0}])
    [{'site': 'm1', 'rms': 2.5, 'ts': 1.0, 'threshold': 1.5}]
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mesh import Mesh, Resources

__all__ = ["THRESHOLD", "WINDOW", "alarms", "app", "build_scorer", "record_vibration"]

app = Mesh("vibration")

#: Samples per window the scorer takes.
WINDOW = 32
#: RMS level over which a window is a fault.
THRESHOLD = 1.5


@app.function(tier="cloud", resources=Resources(cpus=0.25), timeout_s=120)
def build_scorer(out_dir: str, window: int = WINDOW) -> dict[str, Any]:
    """Write the RMS model (``signal`` FP32[N, window] -> ``rms`` FP32[N, 1]) as ONNX."""
    import onnx
    from onnx import TensorProto, helper

    signal = helper.make_tensor_value_info("signal", TensorProto.FLOAT, [None, window])
    rms = helper.make_tensor_value_info("rms", TensorProto.FLOAT, [None, 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["signal", "signal"], ["squared"]),
            helper.make_node("ReduceMean", ["squared", "axes"], ["mean"], keepdims=1),
            helper.make_node("Sqrt", ["mean"], ["rms"]),
        ],
        "vibration-rms",
        [signal],
        [rms],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(out_dir) / f"vibration-rms-w{window}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    path.write_bytes(data)
    return {
        "model": "vibration-rms",
        "onnx_path": str(path),
        "code_version": hashlib.sha256(data).hexdigest()[:12],
        "metrics": {"window": float(window)},
    }


@app.function(tier="cloud", resources=Resources(cpus=0.25), timeout_s=120)
def record_vibration(
    out_dir: str,
    sites: list[str],
    frames: int = 400,
    window: int = WINDOW,
    faulty: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One replay file per machine (``<out_dir>/<site>.frames``) of ``frames`` windows.

    ``faulty`` (default: the first site) has a louder band in the middle third
    of its record: the fog's alarms should name it, and only it.
    """
    import numpy as np

    from edge_agent import write_replay
    from edge_agent.protocol import Tensor, encode_frame

    if not sites:
        raise ValueError("record_vibration needs at least one site")
    faulty = sites[0] if faulty is None else faulty
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k, site in enumerate(sites):
        rng = np.random.default_rng([seed, k])
        payloads = []
        for i in range(frames):
            level = 3.0 if site == faulty and frames // 3 <= i < 2 * frames // 3 else 0.6
            samples = rng.normal(0.0, level, size=(1, window)).astype(np.float32)
            payloads.append(encode_frame({"kind": "frame"}, [Tensor.from_numpy("signal", samples)]))
        write_replay(out / f"{site}.frames", payloads)
    return {"dir": str(out), "sites": list(sites), "frames": frames, "faulty": faulty}


def alarms(window: list[dict[str, Any]], threshold: float = THRESHOLD) -> list[dict[str, Any]]:
    """An alarm per message whose RMS level is over ``threshold`` (the stream's outputs)."""
    out: list[dict[str, Any]] = []
    for message in window:
        values = (message.get("outputs") or {}).get("rms") or []
        level = float(values[0]) if values else 0.0
        if level > threshold:
            out.append(
                {
                    "site": message.get("site"),
                    "rms": round(level, 3),
                    "ts": message.get("ts"),
                    "threshold": threshold,
                }
            )
    return out
