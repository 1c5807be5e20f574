from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_agent.protocol import artifact_signing_message  # noqa: E402
from mesh import MeshError, MeshSettings  # noqa: E402
from mesh.models._artifacts import ArtifactSigner, ArtifactStore, verify_signature  # noqa: E402
from mesh.models._export import InvalidModelError  # noqa: E402
from mesh.models._profile import CPU  # noqa: E402
from mesh.models._registry import (  # noqa: E402
    InvalidRegistrationError,
    Lineage,
    ModelNotFoundError,
    ModelRegistry,
    SelectionMetric,
    Stage,
    StageError,
)


def tiny_onnx(scale: float = 2.0, *, batch: int | str = "batch", opset: int = 18) -> bytes:
    """y = x @ W + b, x: [batch, 3] float32 -> y: [batch, 2]."""
    from onnx import TensorProto, helper

    weights = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], [scale] * 6)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, -0.5])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def broken_onnx() -> bytes:
    """Parses as ONNX, but a node reads a tensor nothing produces: the checker refuses it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return bytes(model.SerializeToString())


def make_registry(root: Path, signer: ArtifactSigner | None = None) -> ModelRegistry:
    return ModelRegistry(
        root / "mesh.db",
        ArtifactStore(root / "artifacts"),
        signer or ArtifactSigner.generate(),
        profile_budget_s=0.01,
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = make_registry(tmp_path)
    yield reg
    reg.close()


def _rows(registry: ModelRegistry) -> int:
    with sqlite3.connect(registry.path) as db:
        return int(db.execute("SELECT COUNT(*) FROM model_versions").fetchone()[0])


def test_register_records_version_signature_metric_lineage(registry: ModelRegistry) -> None:
    data = tiny_onnx()
    v = registry.register(
        "vehicle-counter",
        data,
        code_version="traffic-abc",
        metric=SelectionMetric("val_mae", 0.71, "min"),
        lineage=Lineage(run_id="run-1", data_id="synthetic-1", hyperparameters={"lr": 0.002}),
    )
    assert (v.name, v.version, v.number, v.stage) == ("vehicle-counter", "v1", 1, Stage.CANDIDATE)
    assert v.identity == f"traffic-abc+{v.sha256}" and v.size_bytes == len(data)
    [x] = v.signature.inputs
    [y] = v.signature.outputs
    assert (x.name, x.dtype, x.shape) == ("x", "float32", ("batch", 3))
    assert (y.name, y.shape) == ("y", ("batch", 2)) and v.signature.opset == 18
    assert v.metric == SelectionMetric("val_mae", 0.71, "min")
    assert v.lineage.run_id == "run-1" and v.lineage.hyperparameters == {"lr": 0.002}


def test_profile_at_batch_1_8_32_on_one_cpu_thread(registry: ModelRegistry) -> None:
    v = registry.register("m", tiny_onnx(), code_version="c")
    cpu = v.profile.provider(CPU)
    assert cpu is not None and cpu.threads == 1
    assert [s.batch_size for s in cpu.latency] == [1, 8, 32]
    for stat in cpu.latency:
        assert 0 < stat.p50_ms <= stat.p95_ms and stat.runs >= 10
    assert v.profile.size_bytes == v.size_bytes and cpu.load_ms > 0
    assert cpu.session_rss_delta_bytes is None or cpu.session_rss_delta_bytes >= 0


def test_a_fixed_batch_model_is_profiled_at_its_batch(registry: ModelRegistry) -> None:
    v = registry.register("fixed", tiny_onnx(batch=4), code_version="c")
    cpu = v.profile.provider(CPU)
    assert cpu is not None and [s.batch_size for s in cpu.latency] == [4]


def test_artifact_is_content_addressed_and_signed(tmp_path: Path) -> None:
    signer = ArtifactSigner.generate()
    reg = make_registry(tmp_path, signer)
    data = tiny_onnx()
    v = reg.register("vehicle-counter", data, code_version="c")
    version, path = reg.artifact_path("vehicle-counter", "v1")
    assert path.read_bytes() == data and path.name == v.sha256 == version.sha256
    assert v.key_id == signer.key_id
    verify_signature(
        reg.public_key_b64(),
        v.artifact_signature,
        artifact_signing_message("vehicle-counter", "v1", v.sha256),
    )
    # Re-signed for a module of another name (the gateway's case).
    verify_signature(
        reg.public_key_b64(),
        reg.sign_for(v, "VehicleCounter"),
        artifact_signing_message("VehicleCounter", "v1", v.sha256),
    )
    reg.close()


def test_same_code_and_weights_is_the_same_version(registry: ModelRegistry) -> None:
    a = registry.register("m", tiny_onnx(), code_version="c1")
    again = registry.register("m", tiny_onnx(), code_version="c1")
    other_code = registry.register("m", tiny_onnx(), code_version="c2")
    other_weights = registry.register("m", tiny_onnx(3.0), code_version="c1")
    assert again.version == a.version == "v1"
    assert (other_code.version, other_weights.version) == ("v2", "v3")
    assert other_code.sha256 == a.sha256 != other_weights.sha256
    assert len(list(registry.artifacts)) == 2


def test_promote_and_rollback(registry: ModelRegistry) -> None:
    for scale in (1.0, 2.0, 3.0):
        registry.register("m", tiny_onnx(scale), code_version="c")
    with pytest.raises(ModelNotFoundError, match="no production version"):
        registry.get("m", "production")
    assert registry.promote("m", "v1").stage is Stage.PRODUCTION
    assert registry.promote("m", "v1").stage is Stage.PRODUCTION  # idempotent
    with pytest.raises(StageError, match="no earlier production version"):
        registry.rollback("m")
    registry.promote("m", "2")
    registry.promote("m", "v3")
    assert [v.stage.value for v in registry.versions("m")] == ["archived", "archived", "production"]
    assert registry.rollback("m").version == "v2"
    assert registry.get("m", "production").version == "v2"
    assert registry.get("m", "v3").stage is Stage.ARCHIVED
    assert registry.rollback("m").version == "v1"
    with pytest.raises(StageError):
        registry.rollback("m")
    assert [(e["action"], e["version"]) for e in registry.history("m")] == [
        ("promote", "v1"),
        ("promote", "v2"),
        ("promote", "v3"),
        ("rollback", "v2"),
        ("rollback", "v1"),
    ]
    [summary] = registry.list_models()
    assert (summary.name, summary.versions, summary.latest, summary.production) == (
        "m",
        3,
        "v3",
        "v1",
    )


def test_refs_by_stage_number_and_sha(registry: ModelRegistry) -> None:
    v1 = registry.register("m", tiny_onnx(1.0), code_version="c")
    v2 = registry.register("m", tiny_onnx(2.0), code_version="c")
    assert registry.get("m", "latest") == v2
    assert registry.get("m", "candidate") == v2
    assert registry.get("m", v1.sha256[:10]) == v1
    with pytest.raises(ModelNotFoundError, match=r"no version 'v9' \(versions: v1"):
        registry.get("m", "v9")
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        registry.versions("nope")
    with pytest.raises(ModelNotFoundError):
        registry.promote("m", "v7")


@pytest.mark.parametrize(
    "upload",
    [b"", b"not an onnx file at all", b"\x08\x07", broken_onnx(), b"\x00" * 64],
    ids=["empty", "text", "empty-model", "checker", "zeros"],
)
def test_garbage_is_refused_and_nothing_is_registered(
    registry: ModelRegistry, upload: bytes
) -> None:
    with pytest.raises(InvalidModelError) as caught:
        registry.register("m", upload, code_version="c")
    assert isinstance(caught.value, MeshError)
    assert _rows(registry) == 0
    assert list(registry.artifacts) == []
    assert registry.list_models() == []


def test_bad_names_and_metrics_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidRegistrationError, match="invalid model name"):
        registry.register("../etc", tiny_onnx(), code_version="c")
    with pytest.raises(InvalidRegistrationError, match="code_version"):
        registry.register("m", tiny_onnx(), code_version=" ")
    with pytest.raises(InvalidRegistrationError, match="metric"):
        registry.register("m", tiny_onnx(), code_version="c", metric={"name": "mae"})
    with pytest.raises(InvalidModelError, match="cannot read"):
        registry.register("m", tmp_path / "missing.onnx", code_version="c")
    assert _rows(registry) == 0 and list(registry.artifacts) == []


def test_state_survives_a_reopen(tmp_path: Path) -> None:
    settings = MeshSettings(data_dir=tmp_path)
    reg = ModelRegistry.open(settings, profile_budget_s=0.01)
    v = reg.register("m", tiny_onnx(), code_version="c", metric={"name": "val_mae", "value": 1})
    reg.promote("m", "v1")
    reg.close()
    again = ModelRegistry.open(settings)
    assert again.get("m", "production") == replace(v, stage=Stage.PRODUCTION)
    assert again.key_id == reg.key_id  # the signing key is kept under the data dir
    again.close()


def test_cli_register_show_promote_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from mesh.cli._models import models_app

    cli = typer.Typer()
    cli.add_typer(models_app, name="models")
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "mesh"))
    runner = CliRunner()
    for scale in (1.0, 2.0):
        (tmp_path / f"m{scale}.onnx").write_bytes(tiny_onnx(scale))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")

    def run(*args: str) -> Any:
        return runner.invoke(cli, ["models", *args], env={"COLUMNS": "200"})

    assert "no models registered" in run("list").output
    ok = run(
        "register",
        "counter",
        str(tmp_path / "m1.0.onnx"),
        "--code-version",
        "c1",
        "--metric",
        "val_mae=0.7",
        "--run-id",
        "r1",
        "--param",
        "lr=0.002",
    )
    assert ok.exit_code == 0, ok.output
    assert "registered counter v1" in ok.output
    bad = run("register", "counter", str(tmp_path / "bad.onnx"))
    assert bad.exit_code == 1 and "not an ONNX model" in bad.output
    assert run("register", "counter", str(tmp_path / "m1.0.onnx"), "--metric", "x").exit_code == 2
    assert run("register", "counter", str(tmp_path / "m2.0.onnx")).exit_code == 0
    assert run("promote", "counter", "v1").exit_code == 0
    assert run("promote", "counter", "v2").exit_code == 0
    listing = run("list").output
    assert "counter" in listing and "v2" in listing
    shown = run("show", "counter")
    assert shown.exit_code == 0 and "archived" in shown.output and "production" in shown.output
    assert "production is now v1" in run("rollback", "counter").output
    again = run("rollback", "counter")
    assert again.exit_code == 1 and "no earlier production version" in again.output
    one = run("show", "counter", "--version", "production")
    assert "[batch, 3]" in one.output and "CPUExecutionProvider" in one.output
    payload = json.loads(run("show", "counter", "-v", "v1", "--json").output)
    assert payload["version"] == "v1" and payload["stage"] == "production"
    assert payload["lineage"] == {
        "run_id": "r1",
        "data_id": None,
        "hyperparameters": {"lr": 0.002},
        "extra": {},
    }
    assert run("show", "nope").exit_code == 1
