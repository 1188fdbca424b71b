"""KServe's Open Inference Protocol (v2): tensors in, work items out; outcomes in, tensors out.

A task is a model (model name = task name, version = the published task version).
The model takes one input and gives five outputs:

==============  ========  =======  ==============================================
tensor          datatype  shape    meaning
==============  ========  =======  ==============================================
``text``        BYTES     [N]      the texts to classify (UTF-8); [N, 1] is accepted
``label``       BYTES     [N]      the predicted label of each text
``probabilities`` FP32    [N, C]   label-word probabilities, in ``label_names`` order
``exit_layer``  INT32     [N]      the layer each text exited at
``degraded``    BOOL      [N]      retrieval failed; answered at a fallback exit
``label_names`` BYTES     [C]      the task's label names (also in ModelMetadata)
==============  ========  =======  ==============================================

Request parameters: ``mode`` (string ``raee``, ``full`` or ``fixed``), ``layer``
and ``k`` (integers), as in ``raee.v1.ClassifyRequest``. The conversion is shared
by the gRPC servicer (protos) and the REST app (JSON, with Triton's binary tensor
extension, which tritonclient's HTTP client uses by default); every error names the
field at fault and never echoes the input.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raee import __version__
from raee.errors import InvalidArgumentError
from raee.oip import grpc_predict_v2_pb2 as pb
from raee.v1 import inference_pb2
from raee.wire.inference import MODE_TO_WIRE, Mode, Outcome, WorkItem, work_item
from raee.wire.validate import json_object, require_batch

SERVER_NAME = "raee-serve"
SERVER_VERSION = __version__
PLATFORM = "raee"
INPUT = "text"
OUTPUTS = ("label", "probabilities", "exit_layer", "degraded", "label_names")
PARAMETERS = ("mode", "layer", "k")
# Triton's binary tensor extension (HTTP): the request parameter that asks for binary outputs.
BINARY_OUTPUT = "binary_data_output"
_NUMPY = {"FP32": "<f4", "INT32": "<i4", "BOOL": "?"}


@dataclass(frozen=True)
class Tensor:
    """One output tensor: BYTES tensors hold ``bytes`` in a list, the others a numpy array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[bytes] | np.ndarray

    def raw(self) -> bytes:
        """The flattened row-major elements; BYTES as 4-byte little-endian length + bytes each."""
        if isinstance(self.data, list):
            return b"".join(struct.pack("<I", len(item)) + item for item in self.data)
        return np.ascontiguousarray(self.data, dtype=_NUMPY[self.datatype]).tobytes()

    def values(self) -> list[Any]:
        """Flattened elements for JSON: strings, numbers or booleans."""
        if isinstance(self.data, list):
            return [item.decode() for item in self.data]
        flat: list[Any] = self.data.reshape(-1).tolist()
        return flat


@dataclass(frozen=True)
class InferCall:
    """A validated ModelInfer request."""

    model: str
    version: str
    id: str
    items: list[WorkItem]
    outputs: tuple[str, ...]


# -- inputs -----------------------------------------------------------------------------


def texts_from_raw(raw: bytes, count: int, field: str) -> list[bytes]:
    """Split a raw BYTES tensor (4-byte little-endian length, then the bytes, per element)."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgumentError(field, "a BYTES element's 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgumentError(field, f"element {len(items)} is cut short")
        items.append(raw[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidArgumentError(field, f"holds {len(items)} elements; the shape says {count}")
    return items


def check_input(name: str, datatype: str, shape: Sequence[int], field: str) -> int:
    """The element count of the ``text`` input; an error naming the field if it is not one."""
    if name != INPUT:
        raise InvalidArgumentError(f"{field}.name", f"the model has one input, {INPUT!r}")
    if datatype != "BYTES":
        raise InvalidArgumentError(f"{field}.datatype", f"{INPUT!r} is BYTES, not {datatype[:16]!r}")
    dims = list(shape)
    if not (len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)) or dims[0] < 0:
        raise InvalidArgumentError(f"{field}.shape", f"{INPUT!r} has shape [N] (or [N, 1]), not {dims[:4]}")
    return int(dims[0])


def infer_call(
    model: str,
    version: str,
    request_id: str,
    texts: Sequence[bytes | str],
    parameters: Mapping[str, object],
    outputs: Sequence[str],
    *,
    max_text_chars: int,
    max_items: int,
) -> InferCall:
    """Validate everything but the tensor framing into work items for the micro-batcher."""
    require_batch(texts, max_items, field=f"inputs.{INPUT}")
    unknown = [key for key in parameters if key not in PARAMETERS]
    if unknown:
        raise InvalidArgumentError(f"parameters.{unknown[0][:40]}", f"unknown; known are {list(PARAMETERS)}")
    mode = _parameter(parameters, "mode", str)
    layer = _parameter(parameters, "layer", int)
    k = _parameter(parameters, "k", int)
    try:
        wire_mode = MODE_TO_WIRE[Mode(mode)] if mode is not None else inference_pb2.MODE_UNSPECIFIED
    except ValueError:
        raise InvalidArgumentError("parameters.mode", f"is one of {[m.value for m in Mode]}") from None
    for index, name in enumerate(outputs):
        if name not in OUTPUTS:
            raise InvalidArgumentError(f"outputs[{index}].name", f"unknown output; known are {list(OUTPUTS)}")
    items = []
    for index, value in enumerate(texts):
        try:
            text = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"inputs.{INPUT}[{index}]", "is not UTF-8") from None
        request = inference_pb2.ClassifyRequest(task=model, text=text, mode=wire_mode, layer=layer, k=k)
        try:
            items.append(work_item(request, max_text_chars))
        except InvalidArgumentError as error:
            field = f"inputs.{INPUT}[{index}]" if error.field == "text" else f"parameters.{error.field}"
            if error.field == "task":
                field = "model_name"
            raise InvalidArgumentError(field, str(error).split(": ", 1)[-1]) from None
    return InferCall(model, version, request_id, items, tuple(outputs) or OUTPUTS)


def _parameter(parameters: Mapping[str, object], name: str, kind: type[str] | type[int]) -> Any:
    value = parameters.get(name)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidArgumentError(f"parameters.{name}", "must be an integer")
    if kind is str and not isinstance(value, str):
        raise InvalidArgumentError(f"parameters.{name}", "must be a string")
    return value


# -- outputs ----------------------------------------------------------------------------


def output_tensors(call: InferCall, outcomes: Sequence[Outcome], label_names: Sequence[str]) -> list[Tensor]:
    n, c = len(outcomes), len(label_names)
    build = {
        "label": lambda: Tensor("label", "BYTES", (n,), [o.label.encode() for o in outcomes]),
        "probabilities": lambda: Tensor(
            "probabilities",
            "FP32",
            (n, c),
            np.asarray([o.probabilities for o in outcomes], dtype=np.float32).reshape(n, c),
        ),
        "exit_layer": lambda: Tensor(
            "exit_layer", "INT32", (n,), np.asarray([o.exit_layer for o in outcomes], dtype=np.int32)
        ),
        "degraded": lambda: Tensor("degraded", "BOOL", (n,), np.asarray([o.degraded for o in outcomes])),
        "label_names": lambda: Tensor("label_names", "BYTES", (c,), [name.encode() for name in label_names]),
    }
    return [build[name]() for name in call.outputs]


def tensor_metadata(label_names: Sequence[str]) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs of a task's model, without data (shapes: -1 is variable)."""
    c = len(label_names)
    inputs = [Tensor(INPUT, "BYTES", (-1,), [])]
    outputs = [
        Tensor("label", "BYTES", (-1,), []),
        Tensor("probabilities", "FP32", (-1, c), []),
        Tensor("exit_layer", "INT32", (-1,), []),
        Tensor("degraded", "BOOL", (-1,), []),
        Tensor("label_names", "BYTES", (c,), []),
    ]
    return inputs, outputs


# -- gRPC -------------------------------------------------------------------------------


def parameter_value(parameter: pb.InferParameter) -> object:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def grpc_call(request: pb.ModelInferRequest, *, max_text_chars: int, max_items: int) -> InferCall:
    if len(request.inputs) != 1:
        raise InvalidArgumentError("inputs", f"the model has one input, {INPUT!r}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    count = check_input(tensor.name, tensor.datatype, tensor.shape, "inputs[0]")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidArgumentError("raw_input_contents", "one entry for the one input, and no contents")
        texts = texts_from_raw(request.raw_input_contents[0], count, "raw_input_contents[0]")
    else:
        texts = list(tensor.contents.bytes_contents)
        if len(texts) != count:
            raise InvalidArgumentError(
                "inputs[0].contents.bytes_contents", f"holds {len(texts)} elements; the shape says {count}"
            )
    parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
    return infer_call(
        request.model_name,
        request.model_version,
        request.id,
        texts,
        parameters,
        [output.name for output in request.outputs],
        max_text_chars=max_text_chars,
        max_items=max_items,
    )


def grpc_response(
    call: InferCall, version: str, tensors: Sequence[Tensor], raw: bool
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=call.model, model_version=version, id=call.id)
    for tensor in tensors:
        output = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            response.raw_output_contents.append(tensor.raw())
        elif isinstance(tensor.data, list):
            output.contents.bytes_contents.extend(tensor.data)
        elif tensor.datatype == "FP32":
            output.contents.fp32_contents.extend(tensor.values())
        elif tensor.datatype == "INT32":
            output.contents.int_contents.extend(tensor.values())
        else:
            output.contents.bool_contents.extend(tensor.values())
    return response


def grpc_metadata(task: str, version: str, label_names: Sequence[str]) -> pb.ModelMetadataResponse:
    inputs, outputs = tensor_metadata(label_names)
    meta = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=task,
        versions=[version],
        platform=PLATFORM,
        inputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in inputs],
        outputs=[meta(name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
    )


# -- JSON (REST) ------------------------------------------------------------------------


def json_metadata(task: str, version: str, label_names: Sequence[str]) -> dict[str, Any]:
    inputs, outputs = tensor_metadata(label_names)
    return {
        "name": task,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in outputs],
    }


def json_call(
    model: str, version: str, body: bytes, header_length: int | None, *, max_text_chars: int, max_items: int
) -> tuple[InferCall, set[str]]:
    """A REST infer request (JSON, or JSON + binary tensors); also the outputs wanted in binary."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidArgumentError("Inference-Header-Content-Length", "is outside the body")
    head, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    request = json_object(head)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgumentError("inputs", f"the model has one input, {INPUT!r}")
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgumentError("inputs[0].shape", "must be a list of integers")
    count = check_input(str(tensor.get("name", ""))[:64], str(tensor.get("datatype", "")), shape, "inputs[0]")
    tensor_parameters = tensor.get("parameters") or {}
    if not isinstance(tensor_parameters, dict):
        raise InvalidArgumentError("inputs[0].parameters", "must be an object")
    size = tensor_parameters.get("binary_data_size")
    texts: list[bytes | str]
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InvalidArgumentError("inputs[0].parameters.binary_data_size", "does not match the body")
        texts = list(texts_from_raw(binary, count, "inputs[0] binary data"))
    else:
        data = tensor.get("data")
        if isinstance(data, list) and data and all(isinstance(row, list) for row in data):
            data = [item for row in data for item in row]
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise InvalidArgumentError("inputs[0].data", "must be a list of strings")
        if len(data) != count:
            raise InvalidArgumentError(
                "inputs[0].data", f"holds {len(data)} elements; the shape says {count}"
            )
        texts = list(data)
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgumentError("parameters", "must be an object")
    binary_all = bool(parameters.pop(BINARY_OUTPUT, False))
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidArgumentError("outputs", "must be a list of objects")
    names = [str(o.get("name", ""))[:64] for o in outputs]
    wanted_binary = {
        name for name, o in zip(names, outputs, strict=True) if (o.get("parameters") or {}).get("binary_data")
    }
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgumentError("id", "must be a string")
    built = infer_call(
        model,
        version,
        request_id,
        texts,
        parameters,
        names,
        max_text_chars=max_text_chars,
        max_items=max_items,
    )
    return built, set(built.outputs) if binary_all else wanted_binary


def json_response(
    call: InferCall, version: str, tensors: Sequence[Tensor], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.name in binary:
            blob = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.values()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": call.model, "model_version": version, "outputs": outputs}
    if call.id:
        body["id"] = call.id
    head = json.dumps(body).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
