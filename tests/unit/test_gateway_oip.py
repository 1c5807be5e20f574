"""The Open Inference Protocol codec shared by replicas and the gateway."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mesh.models._export import ModelSignature, TensorSpec
from mesh.serving._oip import (
    InferenceInputError,
    ModelNotServedError,
    check_inputs,
    decode_request,
    decode_response,
    describe_signature,
    encode_request,
    encode_response,
    model_metadata,
    parse_model_path,
)

SIG = ModelSignature(
    inputs=(TensorSpec("x", "float32", ("batch", 4)),),
    outputs=(TensorSpec("y", "float32", ("batch", 4)),),
    opset=17,
)


@pytest.mark.parametrize("binary", [False, True])
def test_request_round_trip(binary: bool) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ids = np.array([1, 2], dtype=np.int64)
    body, header_length = encode_request({"x": x, "ids": ids}, binary=binary)
    assert (header_length is not None) == binary
    request = decode_request("m", body, header_length)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert request.inputs["ids"].dtype == np.int64
    assert request.outputs is None and request.binary is False


def test_request_outputs_and_parameters() -> None:
    doc = {
        "id": "r1",
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    request = decode_request("m", json.dumps(doc).encode())
    assert request.id == "r1" and request.binary is True
    assert request.outputs is not None and request.outputs[0].binary is False
    assert request.inputs["x"].shape == (1, 4)  # nested data is accepted too


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (b"not json", "not JSON"),
        (b"[]", "non-empty 'inputs'"),
        (b'{"inputs": []}', "non-empty 'inputs'"),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}',
            "unsupported datatype 'FP99'",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}',
            "2 values do not fill shape [3]",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}',
            "shape must be a list of sizes",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}',
            "neither 'data' nor 'binary_data_size'",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}',
            "data is not FP32",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
            b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
            "given twice",
        ),
    ],
)
def test_malformed_requests_are_refused(doc: bytes, needle: str) -> None:
    with pytest.raises(InferenceInputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        decode_request("m", doc)


def test_binary_sizes_are_checked() -> None:
    body, header_length = encode_request({"x": np.zeros((1, 4), np.float32)}, binary=True)
    assert header_length is not None
    with pytest.raises(InferenceInputError, match="runs past"):
        decode_request("m", body[:-4], header_length)
    with pytest.raises(InferenceInputError, match="outside"):
        decode_request("m", body, len(body) + 1)
    doc = json.loads(body[:header_length])
    doc["inputs"][0]["parameters"]["binary_data_size"] = 8
    head = json.dumps(doc).encode()
    with pytest.raises(InferenceInputError, match="do not hold"):
        decode_request("m", head + body[header_length : header_length + 8], len(head))


def test_check_inputs_names_the_expected_signature() -> None:
    ok = {"x": np.zeros((3, 4), np.float32)}
    check_inputs("m", ok, SIG.inputs)
    cases = [
        ({"z": np.zeros((1, 4), np.float32)}, "missing input 'x'; unknown input 'z'"),
        ({"x": np.zeros((1, 5), np.float32)}, "input 'x' has shape [1, 5], not [-1,4]"),
        ({"x": np.zeros((1, 4, 1), np.float32)}, "has shape [1, 4, 1]"),
        ({"x": np.zeros((1, 4), np.float64)}, "has datatype FP64, not FP32"),
    ]
    for inputs, needle in cases:
        with pytest.raises(InferenceInputError) as info:
            check_inputs("m", inputs, SIG.inputs)
        assert needle in str(info.value)
        assert "expected inputs x: FP32[-1,4]" in str(info.value)
        assert info.value.expected == ["x: FP32[-1,4]"]


@pytest.mark.parametrize("binary", [False, True])
def test_response_round_trip(binary: bool) -> None:
    y = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    body, header_length = encode_response(
        "m", "v2", "r9", {"y": y, "z": y[:, :1]}, requested=None, binary=binary
    )
    out = decode_response(body, header_length)
    np.testing.assert_array_equal(out["y"], y)
    head = json.loads(body if header_length is None else body[:header_length])
    assert (head["model_name"], head["model_version"], head["id"]) == ("m", "v2", "r9")


def test_response_honours_requested_outputs() -> None:
    from mesh.serving._oip import RequestedOutput

    y = np.ones((1, 2), np.float32)
    body, header_length = encode_response(
        "m",
        None,
        None,
        {"y": y, "z": y},
        binary=False,
        requested=[RequestedOutput("z", binary=True)],
    )
    assert header_length is not None
    head = json.loads(body[:header_length])
    assert [o["name"] for o in head["outputs"]] == ["z"] and "model_version" not in head
    with pytest.raises(InferenceInputError, match="unknown output 'w'"):
        encode_response("m", None, None, {"y": y}, binary=False, requested=[RequestedOutput("w")])


def test_model_paths() -> None:
    assert parse_model_path("/v2/models/counter/infer") == ("counter", None, "infer")
    assert parse_model_path("/v2/models/counter") == ("counter", None, "")
    assert parse_model_path("/v2/models/counter/") == ("counter", None, "")
    assert parse_model_path("/v2/models/counter/versions/v3/ready") == ("counter", "v3", "ready")
    assert parse_model_path("/v2/models/counter/versions/v3") == ("counter", "v3", "")
    assert parse_model_path("/v2/models//infer") is None
    assert parse_model_path("/v2/models/counter/explain") is None
    assert parse_model_path("/v1/models/counter") is None


def test_metadata_and_not_served_message() -> None:
    # The status of every serving error is pinned in tests/unit/test_errors.py.
    doc = model_metadata("m", ["v1"], SIG)
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert doc["platform"] == "onnxruntime_onnx"
    assert describe_signature(SIG.outputs) == ["y: FP32[-1,4]"]
    assert "served: a, b" in str(ModelNotServedError("m", served=["b", "a"]))
