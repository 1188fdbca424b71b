"""The Open Inference Protocol (v2) over gRPC: the unmodified tritonclient answers equal Classify's."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from raee.oip import grpc_predict_v2_pb2 as pb
from raee.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2_grpc, retrieval_pb2
from raee.wire.inference import classify_request
from raee_cli.pair import ServicePair
from tests.conftest import DEMO_TEST_TEXTS as TEXTS

ROOT = Path(__file__).resolve().parent.parent
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"


async def run_triton(*args: str) -> dict[str, Any]:
    """tests/triton_probe.py in tritonclient's own venv; the event loop keeps serving meanwhile."""
    if not TRITON_PYTHON.exists():
        pytest.fail("tritonclient is missing: run `make install` (it builds .venv-triton)")
    process = await asyncio.create_subprocess_exec(
        str(TRITON_PYTHON),
        str(ROOT / "tests" / "triton_probe.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


async def classify_all(pair: ServicePair, task: str, texts: list[str], **kwargs: Any) -> list[Any]:
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return [await stub.Classify(classify_request(task, t, **kwargs), timeout=60) for t in texts]


def assert_same_answers(got: dict[str, Any], expected: list[Any], labels: tuple[str, ...]) -> None:
    assert got["label"] == [a.label for a in expected]
    assert got["exit_layer"] == [a.exit_layer for a in expected]
    assert got["degraded"] == [a.degraded for a in expected]
    assert got["label_names"] == list(labels)
    np.testing.assert_allclose(got["probabilities"], [list(a.probabilities) for a in expected], atol=1e-5)


@pytest.fixture
async def oip(pair: ServicePair) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.slow
async def test_tritonclient_grpc_answers_equal_classify(pair: ServicePair, demo_spec: TaskSpec) -> None:
    expected = await classify_all(pair, demo_spec.name, TEXTS)
    got = await run_triton("grpc", pair.inference_address, demo_spec.name, *TEXTS)
    assert (got["live"], got["ready"], got["model_ready"], got["missing_ready"]) == (True, True, True, False)
    assert_same_answers(got, expected, demo_spec.label_names)
    assert got["model_version"] == expected[0].task_version
    metadata = got["metadata"]
    assert metadata["name"] == demo_spec.name and metadata["versions"] == [expected[0].task_version]
    assert [(t["name"], t["datatype"]) for t in metadata["outputs"]] == [
        ("label", "BYTES"),
        ("probabilities", "FP32"),
        ("exit_layer", "INT32"),
        ("degraded", "BOOL"),
        ("label_names", "BYTES"),
    ]
    assert metadata["outputs"][1]["shape"] == ["-1", str(demo_spec.num_labels)]  # int64 as JSON strings
    assert got["bad_datatype"].startswith("StatusCode.INVALID_ARGUMENT") and "datatype" in got["bad_datatype"]


@pytest.mark.slow
async def test_tritonclient_grpc_fixed_mode(pair: ServicePair, demo_spec: TaskSpec) -> None:
    expected = await classify_all(pair, demo_spec.name, TEXTS[:3], mode="fixed", layer=6)
    got = await run_triton(
        "grpc", pair.inference_address, demo_spec.name, "--mode", "fixed", "--layer", "6", *TEXTS[:3]
    )
    assert_same_answers(got, expected, demo_spec.label_names)
    assert set(got["exit_layer"]) == {6}


def infer_request(task: str, texts: list[str], **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=task)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    for key, value in fields.items():
        parameter = request.parameters[key]
        if isinstance(value, str):
            parameter.string_param = value
        else:
            parameter.int64_param = value
    return request


async def test_contents_and_raw_inputs_both_work(
    pair: ServicePair, oip: pb_grpc.GRPCInferenceServiceStub, demo_spec: TaskSpec
) -> None:
    expected = await classify_all(pair, demo_spec.name, TEXTS[:2], mode="full")
    typed = await oip.ModelInfer(infer_request(demo_spec.name, TEXTS[:2], mode="full"), timeout=60)
    assert not typed.raw_output_contents
    assert [o.name for o in typed.outputs] == [
        "label",
        "probabilities",
        "exit_layer",
        "degraded",
        "label_names",
    ]
    assert list(typed.outputs[0].contents.bytes_contents) == [a.label.encode() for a in expected]
    assert list(typed.outputs[2].contents.int_contents) == [18, 18]

    raw = infer_request(demo_spec.name, TEXTS[:2], mode="full")
    raw.inputs[0].ClearField("contents")
    raw.raw_input_contents.append(
        b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS[:2])
    )
    raw.outputs.add(name="probabilities")
    answer = await oip.ModelInfer(raw, timeout=60)
    assert [o.name for o in answer.outputs] == ["probabilities"]
    assert list(answer.outputs[0].shape) == [2, demo_spec.num_labels]
    probabilities = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, -1)
    np.testing.assert_allclose(probabilities, [list(a.probabilities) for a in expected], atol=1e-5)


async def test_bad_tensors_are_invalid_argument_naming_the_field(
    oip: pb_grpc.GRPCInferenceServiceStub, demo_spec: TaskSpec
) -> None:
    task = demo_spec.name

    def changed(change: Any) -> pb.ModelInferRequest:
        request = infer_request(task, ["fine", "also fine"])
        change(request)
        return request

    cases = [
        (changed(lambda r: setattr(r.inputs[0], "name", "txt")), "inputs[0].name"),
        (changed(lambda r: setattr(r.inputs[0], "datatype", "FP32")), "inputs[0].datatype"),
        (changed(lambda r: r.inputs[0].shape.__setitem__(0, 3)), "inputs[0].contents.bytes_contents"),
        (changed(lambda r: r.inputs[0].shape.append(2)), "inputs[0].shape"),
        (changed(lambda r: r.inputs.add(name="text", datatype="BYTES", shape=[1])), "inputs"),
        (changed(lambda r: r.raw_input_contents.append(b"\x05\x00\x00\x00ab")), "raw_input_contents"),
        (changed(lambda r: r.outputs.add(name="logits")), "outputs[0].name"),
        (
            changed(lambda r: r.parameters["temperature"].CopyFrom(pb.InferParameter(int64_param=1))),
            "parameters.temperature",
        ),
        (
            changed(lambda r: r.parameters["mode"].CopyFrom(pb.InferParameter(string_param="fast"))),
            "parameters.mode",
        ),
        (changed(lambda r: r.parameters["k"].CopyFrom(pb.InferParameter(string_param="3"))), "parameters.k"),
        (
            changed(lambda r: r.parameters["layer"].CopyFrom(pb.InferParameter(int64_param=3))),
            "parameters.layer",
        ),
        (changed(lambda r: r.inputs[0].contents.bytes_contents.__setitem__(1, b"\xff")), "inputs.text[1]"),
        (changed(lambda r: r.inputs[0].contents.bytes_contents.__setitem__(0, b" ")), "inputs.text[0]"),
        (changed(lambda r: setattr(r, "model_name", "Bad Name")), "task"),
        (infer_request(task, []), "inputs.text"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await oip.ModelInfer(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, caught.value.details())
        assert field in (caught.value.details() or ""), (field, caught.value.details())


async def test_models_are_published_tasks(
    oip: pb_grpc.GRPCInferenceServiceStub, pair: ServicePair, demo_spec: TaskSpec
) -> None:
    assert (await oip.ServerLive(pb.ServerLiveRequest())).live
    assert (await oip.ServerReady(pb.ServerReadyRequest())).ready
    server = await oip.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "raee-serve"
    metadata = await oip.ModelMetadata(pb.ModelMetadataRequest(name=demo_spec.name))
    version = metadata.versions[0]
    assert (await oip.ModelReady(pb.ModelReadyRequest(name=demo_spec.name, version=version))).ready
    assert not (await oip.ModelReady(pb.ModelReadyRequest(name=demo_spec.name, version="v-old"))).ready
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await oip.ModelMetadata(pb.ModelMetadataRequest(name="no-such-task"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    request = infer_request(demo_spec.name, ["fine"])
    request.model_version = "v-old"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await oip.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "version" in (caught.value.details() or "")
    request.model_version = version
    request.id = "req-7"
    answer = await oip.ModelInfer(request, timeout=30)
    assert (answer.id, answer.model_version) == ("req-7", version)


async def test_list_and_get_task_on_the_inference_service(pair: ServicePair, demo_spec: TaskSpec) -> None:
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        listed = await stub.ListTasks(retrieval_pb2.ListTasksRequest())
        assert [t.task for t in listed.tasks] == [demo_spec.name]
        info = await stub.GetTask(retrieval_pb2.GetTaskRequest(task=demo_spec.name))
        assert [label.name for label in info.spec.labels] == list(demo_spec.label_names)
        assert info.version == listed.tasks[0].version
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTask(retrieval_pb2.GetTaskRequest(task="no-such-task"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTask(retrieval_pb2.GetTaskRequest(task=""))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
