"""app.oip: the v2 tensor wire format, both ways, against tritonclient's own encoder and decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from app import oip

NUMERIC = [name for name in oip.DTYPES if name != "BYTES"]
ELEMENTS = np.array([[b"", b"\x00\xff\x10"], [b"cat", "é".encode()]], dtype=object)


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def read(inputs: list[triton.InferInput], **kwargs: object) -> tuple[oip.InferRequest, dict]:
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return oip.read_request(body, None if json_size is None else str(json_size))


def test_datatypes_are_tritons() -> None:
    for name, dtype in oip.DTYPES.items():
        assert np.dtype(triton_to_np_dtype(name)) == dtype, name


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", NUMERIC)
def test_reads_what_tritonclient_sends(datatype: str, binary: bool) -> None:
    a = sample(datatype)
    t = triton.InferInput("x", list(a.shape), datatype).set_data_from_numpy(a, binary_data=binary)
    request, tensors = read([t], request_id="r1")
    assert request.id == "r1"
    got = tensors["x"]
    assert got.dtype == oip.DTYPES[datatype] and got.shape == a.shape
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable  # torch.from_numpy shares it without a warning


def test_reads_bytes_and_several_binary_inputs_in_order() -> None:
    a, b = sample("FP32"), sample("INT64", (1,))
    inputs = [
        triton.InferInput("e", [2, 2], "BYTES").set_data_from_numpy(ELEMENTS),
        triton.InferInput("a", [2, 3], "FP32").set_data_from_numpy(a),
        triton.InferInput("b", [1], "INT64").set_data_from_numpy(b, binary_data=False),
    ]
    _, tensors = read(inputs)
    assert tensors["e"].dtype == object and tensors["e"].tolist() == ELEMENTS.tolist()
    np.testing.assert_array_equal(tensors["a"], a)
    np.testing.assert_array_equal(tensors["b"], b)


def test_json_data_may_be_nested_or_flat() -> None:
    def one(data: object) -> np.ndarray:
        head = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": data}]}
        return oip.read_request(json.dumps(head).encode(), None)[1]["x"]

    np.testing.assert_array_equal(one([[1, 2], [3, 4]]), one([1, 2, 3, 4]))
    with pytest.raises(oip.BadTensor, match="rectangular"):
        one([[1, 2], [3]])


def test_pack_bytes_is_tritons_layout() -> None:
    packed = oip.pack_bytes(ELEMENTS)
    assert packed == serialize_byte_tensor(ELEMENTS).item()
    assert oip.unpack_bytes(packed, "e") == ELEMENTS.ravel().tolist()
    with pytest.raises(oip.BadTensor, match="runs past"):
        oip.unpack_bytes(packed[:-1], "e")
    with pytest.raises(oip.BadTensor, match="inside an element's length"):
        oip.unpack_bytes(packed + b"\x01", "e")


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_reads_what_we_answer(binary: bool) -> None:
    outputs = {
        "p": sample("FP32"),
        "n": sample("INT64", (2,)),
        "labels": np.array([[b"0.5:1:dog"], [b"0.25:0:cat"]], dtype=object),
    }
    request = oip.InferRequest.model_validate(
        {
            "id": "r2",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0]}],
            "parameters": {"binary_data_output": binary},
        }
    )
    body, headers = oip.write_response("m", "v1", request, outputs)
    length = headers.get(oip.HEADER_LENGTH)
    assert (length is not None) == binary
    result = triton.InferResult.from_response_body(body, header_length=length and int(length))
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("m", "v1", "r2")
    for name, a in outputs.items():
        got = result.as_numpy(name)
        if a.dtype == object and not binary:  # JSON strings come back as str
            got = np.vectorize(str.encode, otypes=[object])(got)
        assert got.shape == a.shape
        np.testing.assert_array_equal(got, a)
