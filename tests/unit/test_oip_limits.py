"""The OIP bounds layer and the JSON depth check: every out-of-bounds value is one 400 line."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mesh.core._json_limits import JsonLimitError, loads_bounded, nesting_exceeds
from mesh.serving._oip import InferenceInputError, decode_request, encode_request


def _doc(**tensor: Any) -> bytes:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0], **tensor}]}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_doc(shape=[True]), "shape must be a list of sizes"),
        (_doc(shape=[1.0]), "shape must be a list of sizes"),
        (_doc(shape=[10**30]), "shape must be a list of sizes"),
        (_doc(shape=[1] * 33), "shape must be a list of sizes"),
        (_doc(shape=[0, 2**30, 2**30], data=[]), "elements"),
        (_doc(datatype="INT32", data=[2**40]), "data is not INT32"),
        (_doc(datatype="UINT8", data=[-1]), "data is not UINT8"),
        (_doc(data=[[1.0], 2.0]), "data is not FP32"),
        (_doc(data={"a": 1}), "data is not FP32"),
        (_doc().replace(b"1.0", b"1e999"), "too large for FP32"),
        (_doc().replace(b"1.0", b"NaN"), "NaN is not a JSON number"),
        (_doc(datatype={"a": 1}), "unsupported datatype"),
        (_doc(name="x" * 300), "'name' of 1 to 256"),
        (_doc(name=""), "'name' of 1 to 256"),
        (_doc(parameters=[1]), "'parameters' must be an object"),
        (_doc(parameters={"binary_data_size": True}), "binary_data_size True"),
        (b'{"inputs": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper than 64"),
        (b"[" * 100_000, "nested deeper than 64"),
        (json.dumps({"inputs": [{}] * 300}).encode(), "at most 256 tensors"),
        (
            json.dumps(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}],
                }
            ).encode(),
            "binary_data must be true or false",
        ),
        (
            json.dumps(
                {
                    "id": ["a"],
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                }
            ).encode(),
            "'id' must be a string",
        ),
    ],
)
def test_out_of_bounds_values_are_one_line_400s(body: bytes, needle: str) -> None:
    with pytest.raises(InferenceInputError) as caught:
        decode_request("m", body)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.http_status == 400


def test_binary_bytes_past_the_inputs_are_refused() -> None:
    body, length = encode_request({"x": np.ones(2, np.float32)})
    with pytest.raises(InferenceInputError, match="4 binary bytes follow"):
        decode_request("m", body + b"\0" * 4, length)


def test_valid_requests_still_decode() -> None:
    body, length = encode_request({"x": np.ones((2, 3), np.float32)})
    assert decode_request("m", body, length).inputs["x"].shape == (2, 3)
    doc = _doc(shape=[2, 2], data=[[1, 2], [3, 4]], id="r1")
    request = decode_request("m", doc)
    assert request.inputs["x"].tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 65 + b"]" * 65, True),
        (b"[{" * 32 + b"}]" * 32, False),
        (b"[{" * 33 + b"}]" * 33, True),
        (b'["' + b"[" * 500 + b'"]', False),  # brackets in a string do not count
        (b'["\\"' + b"[" * 500 + b'"]', False),  # nor after an escaped quote
        (b'["\\\\"' + b"," + b"[" * 100 + b"]" * 100 + b"]", True),  # an escaped backslash
        (b'["]"' + b',"]"' * 100 + b"," + b"[" * 100 + b"]" * 100 + b"]", True),
        (b"[" * 100, True),  # unbalanced
        (b"]" * 100, False),  # nothing opens: not deep (the parser refuses it)
    ],
)
def test_nesting_is_measured_outside_strings(text: bytes, deep: bool) -> None:
    assert nesting_exceeds(text, 64) is deep


def test_loads_bounded_refuses_what_json_loads_would_crash_on() -> None:
    with pytest.raises(JsonLimitError, match="nested deeper"):
        loads_bounded(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(JsonLimitError, match="Infinity is not a JSON number"):
        loads_bounded(b"[Infinity]")
    assert loads_bounded(b'{"a": "[[["}') == {"a": "[[["}


def test_nesting_counts_brackets_in_long_bodies_too() -> None:
    # Past 4 KiB numpy counts the brackets: the same answer as a short body's count.
    deep = b'{"pad": "' + b"x" * 8192 + b'", "a": ' + b"[" * 70 + b"]" * 70 + b"}"
    assert nesting_exceeds(deep, 64)
    assert not nesting_exceeds(deep.replace(b"[" * 70 + b"]" * 70, b"[" * 60 + b"]" * 60), 64)


def _refuse_constant(name: str) -> Any:
    raise JsonLimitError(f"{name} is not a JSON number")


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": [1, 2.5, -3e-7, true, null, "x\\u00e9"]}',
        b"1e999",  # the standard parser's inf (a tensor then refuses it)
        b"[NaN]",
        b"[-Infinity]",
        b"[1,]",
        b'{"a": 1,}',
        b'"\\ud800"',
        b"\xff",
        b"",
        b"[1] [2]",
    ],
)
def test_the_fast_parser_accepts_and_refuses_what_the_standard_one_does(text: bytes) -> None:
    """Where orjson is installed it parses; what it refuses the standard parser decides."""
    try:
        expected: Any = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        with pytest.raises(JsonLimitError) as refused:
            loads_bounded(text)
        assert str(exc).split(":")[0] in str(refused.value)
    else:
        assert loads_bounded(text) == expected


def test_the_cloud_extra_parses_with_orjson() -> None:
    pytest.importorskip("orjson")
    from mesh.core import _json_limits

    assert _json_limits._orjson is not None
