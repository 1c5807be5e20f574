from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from mesh import MeshError  # noqa: E402
from mesh.models._export import (  # noqa: E402
    DEFAULT_OPSET,
    ExportError,
    ExportParityError,
    ExportReport,
    check_parity,
    export_onnx,
    load_checked,
)

# torch 2.13's exporter trips its own deprecation (torch.utils._pytree LeafSpec).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning"
)


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, (1, 3), padding=(0, 1)),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 2 * 16, 4),
    ).eval()


class _Noisy(torch.nn.Module):
    """Exports fine, but ONNX Runtime draws other random numbers than torch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3)) + torch.randn_like(x).sum(dim=(2, 3))


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random((20, 4, 2, 16), dtype=np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, held_out: torch.Tensor) -> ExportReport:
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    model = _tiny(0).train()
    report = export_onnx(
        model,
        held_out[:2],
        path,
        input_names=["occupancy"],
        output_names=["counts"],
        parity_inputs=[held_out[:1], held_out[1:8], held_out[8:]],
        tolerance=1e-4,
    )
    assert model.training  # exported from an eval-mode copy; the caller's is untouched
    return report


def test_export_passes_the_checker_at_the_pinned_opset(exported: ExportReport) -> None:
    data = exported.path.read_bytes()
    model = load_checked(data)  # onnx.checker, full check
    onnx.checker.check_model(model, full_check=True)
    assert exported.opset == DEFAULT_OPSET == 18
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert exported.size_bytes == len(data) and len(exported.sha256) == 64
    assert exported.path.stat().st_mode & 0o777 == 0o644


def test_export_records_the_drift_reference_of_its_held_out_inputs(
    exported: ExportReport, held_out: torch.Tensor
) -> None:
    ref = exported.drift_reference
    assert ref is not None and ref["samples"] == 20 and ref["error"] is None
    rows = held_out.numpy().reshape(20, -1).mean(axis=1)
    assert ref["inputs"]["mean"] == pytest.approx(float(rows.mean()), rel=1e-5)
    assert ref["outputs"] == ref["by_output"]["counts"] and ref["outputs"]["std"] >= 0


def test_signature_has_a_dynamic_batch_axis(exported: ExportReport) -> None:
    [inp] = exported.signature.inputs
    [out] = exported.signature.outputs
    assert (inp.name, inp.dtype, inp.shape) == ("occupancy", "float32", ("batch", 4, 2, 16))
    assert (out.name, out.shape) == ("counts", ("batch", 4))
    assert inp.batch_dynamic


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_runs_and_matches_torch(exported: ExportReport, batch: int) -> None:
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    x = torch.rand(batch, 4, 2, 16)
    [got] = session.run(None, {"occupancy": x.numpy()})
    with torch.no_grad():
        expected = _tiny(0)(x).numpy()
    assert got.shape == (batch, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_parity_is_recorded(exported: ExportReport) -> None:
    assert 0.0 <= exported.max_abs_error <= 1e-4
    assert exported.parity_samples == 20 and exported.tolerance == 1e-4


def test_a_different_torch_model_fails_parity_with_the_figure(
    exported: ExportReport, held_out: torch.Tensor
) -> None:
    error, samples = check_parity(_tiny(0), exported.path, [held_out], tolerance=1e-4)
    assert error <= 1e-4 and samples == 20
    with pytest.raises(ExportParityError) as caught:
        check_parity(_tiny(1), exported.path, [held_out], tolerance=1e-4)
    assert isinstance(caught.value, MeshError)
    assert caught.value.max_abs_error > 1e-3 and caught.value.tolerance == 1e-4
    assert f"{caught.value.max_abs_error:.3g}" in str(caught.value)


def test_export_beyond_tolerance_is_refused_and_leaves_no_file(
    tmp_path: Path, held_out: torch.Tensor
) -> None:
    target = tmp_path / "noisy.onnx"
    with pytest.raises(ExportParityError, match=r"max abs error .* > tolerance 0\.0001") as caught:
        export_onnx(_Noisy(), held_out[:2], target, parity_inputs=[held_out], tolerance=1e-4)
    assert caught.value.max_abs_error > 0.1
    assert list(tmp_path.iterdir()) == []


def test_empty_parity_inputs_are_refused(tmp_path: Path, held_out: torch.Tensor) -> None:
    with pytest.raises(ExportError, match="parity_inputs is empty"):
        export_onnx(_tiny(0), held_out[:2], tmp_path / "m.onnx", parity_inputs=[])
    assert list(tmp_path.iterdir()) == []


def test_import_mesh_export_stays_light() -> None:
    code = (
        "import sys, mesh, mesh.models._export, mesh.models._profile, mesh.models._registry, mesh.cli._models; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'fastapi', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
