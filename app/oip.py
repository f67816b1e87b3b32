"""The Open Inference Protocol's (KServe v2) tensor wire format: JSON tensors and Triton's
binary tensor data extension, both ways. No model or route knowledge here.

A request body is a JSON header, optionally followed by raw tensor bytes: the header's length
is in `Inference-Header-Content-Length`, and each input sent that way has the parameter
`binary_data_size` (its bytes, in input order). Numeric tensors travel little-endian, row-major;
a BYTES element travels as a 4-byte little-endian length and its bytes. Answers go the same way
for outputs asked with `binary_data: true` (or the request's `binary_data_output: true`),
as JSON lists (row-major, flattened) otherwise.
Shapes: B batch; a tensor's declared shape always matches its element count.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"

# v2 datatype -> numpy dtype (little-endian, as the binary extension sends them); BYTES -> object.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
Parameters = dict[str, str | int | float | bool]


class BadTensor(HTTPException):
    """A request the protocol cannot read, or whose tensors do not fit the model (400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


class _Wire(BaseModel):
    # Unknown fields are ignored: clients add their own (KServe's sends `model_name`).
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Wire):
    name: str
    shape: list[int] = Field(description="Dimensions; the element count is their product")
    datatype: str
    parameters: Parameters | None = None
    data: Any = Field(default=None, description="Row-major, flat or nested (absent if binary)")


class RequestOutput(_Wire):
    name: str
    parameters: Parameters | None = None


class InferRequest(_Wire):
    """An inference request's JSON header."""

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def _validation_detail(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"invalid inference request: {loc + ': ' if loc else ''}{err['msg']}"


def read_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, Any]]:
    """A request body -> its header and one numpy array per input, shaped as declared
    (BYTES: an object array of `bytes`). 400 for anything malformed."""
    if header_length is None:
        header, rest = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadTensor(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)}")
        n = int(header_length)
        header, rest = body[:n], body[n:]
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as e:
        raise BadTensor(_validation_detail(e)) from None
    tensors: dict[str, Any] = {}
    offset = 0
    for t in request.inputs:
        if t.name in tensors:
            raise BadTensor(f"input {t.name!r} is given twice")
        if t.datatype not in DTYPES:
            raise BadTensor(f"input {t.name!r}: unknown datatype {t.datatype!r}")
        if any(d < 0 for d in t.shape):
            raise BadTensor(f"input {t.name!r}: negative dimension in shape {t.shape}")
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadTensor(f"input {t.name!r}: binary_data_size must be a byte count")
            if offset + size > len(rest):
                raise BadTensor(
                    f"input {t.name!r}: binary_data_size {size} runs past the body's "
                    f"{len(rest)} bytes of tensor data"
                )
            tensors[t.name] = _from_binary(t, rest[offset : offset + size])
            offset += size
        else:
            tensors[t.name] = _from_json(t)
    if offset != len(rest):
        raise BadTensor(f"{len(rest) - offset} bytes of tensor data after the last binary input")
    return request, tensors


def _from_binary(t: RequestInput, raw: bytes) -> Any:
    count = math.prod(t.shape)
    if t.datatype == "BYTES":
        elements = unpack_bytes(raw, t.name)
        if len(elements) != count:
            raise BadTensor(f"input {t.name!r}: {len(elements)} BYTES elements for shape {t.shape}")
        return _object_array(elements, t.shape)
    dtype = DTYPES[t.datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadTensor(
            f"input {t.name!r}: {len(raw)} bytes for {t.datatype} {t.shape} "
            f"({count * dtype.itemsize} expected)"
        )
    # A copy: the array owns writable memory (torch refuses to share a read-only buffer).
    return np.frombuffer(raw, dtype=dtype).reshape(t.shape).copy()


def _from_json(t: RequestInput) -> Any:
    if t.data is None:
        raise BadTensor(f"input {t.name!r} has neither data nor binary_data_size")
    count = math.prod(t.shape)
    if t.datatype == "BYTES":
        flat = _flatten(t.data)
        b64 = (t.parameters or {}).get("content_type") == "base64"
        if not all(isinstance(s, str) for s in flat):
            raise BadTensor(f"input {t.name!r}: BYTES data in JSON must be strings")
        try:
            elements = [base64.b64decode(s, validate=True) if b64 else s.encode() for s in flat]
        except binascii.Error:
            raise BadTensor(f"input {t.name!r}: content_type base64 but not base64") from None
        if len(elements) != count:
            raise BadTensor(f"input {t.name!r}: {len(elements)} elements for shape {t.shape}")
        return _object_array(elements, t.shape)
    try:
        a = np.asarray(t.data, dtype=DTYPES[t.datatype])
    except (ValueError, TypeError, OverflowError):
        raise BadTensor(
            f"input {t.name!r}: data is not a rectangular array of {t.datatype} values"
        ) from None
    if a.size != count:
        raise BadTensor(f"input {t.name!r}: {a.size} values for shape {t.shape}")
    return a.reshape(t.shape)


def _flatten(data: Any) -> list[Any]:
    """Nested JSON lists -> their leaves, row-major (a scalar is one element)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for d in data:
        out.extend(_flatten(d))
    return out


def _object_array(elements: Sequence[bytes], shape: list[int]) -> Any:
    a = np.empty(len(elements), dtype=object)
    a[:] = elements
    return a.reshape(shape)


def unpack_bytes(raw: bytes, name: str) -> list[bytes]:
    """Length-prefixed BYTES elements (the binary extension's layout) -> the elements."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BadTensor(f"input {name!r}: BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise BadTensor(f"input {name!r}: a BYTES element runs past its binary data")
        out.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def pack_bytes(elements: Any) -> bytes:
    """BYTES elements (row-major) -> the length-prefixed layout."""
    return b"".join(struct.pack("<I", len(e)) + e for e in np.asarray(elements).ravel())


def rows(a: Any) -> list[Tensor]:
    """A (B, ...) numeric array -> B tensors sharing its memory (a predictor's items)."""
    return list(torch.from_numpy(a).unbind(0))


def datatype_of(a: Any) -> str:
    """The v2 datatype of a numpy array (object arrays of bytes are BYTES)."""
    for name, dtype in DTYPES.items():
        if a.dtype == dtype:
            return name
    raise TypeError(f"no v2 datatype for {a.dtype}")


def write_response(
    model: str,
    version: str,
    request: InferRequest,
    outputs: dict[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """Named output arrays -> the response body and its headers, each output binary or JSON as
    the request asks (per output `binary_data`, else the request's `binary_data_output`)."""
    default_binary = bool((request.parameters or {}).get("binary_data_output", False))
    wanted = {o.name: o.parameters or {} for o in request.outputs or []}
    header: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        header["id"] = request.id
    entries, blobs = [], []
    for name, a in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(a), "shape": list(a.shape)}
        if bool(wanted.get(name, {}).get("binary_data", default_binary)):
            blob = pack_bytes(a) if a.dtype == object else np.ascontiguousarray(a).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif a.dtype == object:
            entry["data"] = [e.decode() for e in a.ravel()]
        else:
            entry["data"] = a.ravel().tolist()
        entries.append(entry)
    header["outputs"] = entries
    head = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *blobs]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }
