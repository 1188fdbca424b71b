"""Drive a worker with the unmodified tritonclient from PyPI; print what it got as one JSON line.

It runs in .venv-triton (tritonclient pins protobuf<7, the project's venv has 7;
see the Makefile), so the tests start it as a subprocess:
    .venv-triton/bin/python tests/triton_probe.py grpc|http ADDRESS TASK [--mode M --layer L] TEXT...
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("protocol", choices=["grpc", "http"])
    parser.add_argument("address")
    parser.add_argument("task")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--mode")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--token", default="")
    parser.add_argument("--json", action="store_true", help="HTTP: JSON tensors, not the binary extension")
    args = parser.parse_args()
    if args.protocol == "grpc":
        import tritonclient.grpc as triton
    else:
        import tritonclient.http as triton  # type: ignore[no-redef]
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    client = triton.InferenceServerClient(args.address)
    out: dict[str, object] = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(args.task, headers=headers),
        "missing_ready": client.is_model_ready("no-such-task", headers=headers),
    }
    metadata = client.get_model_metadata(args.task, headers=headers)
    out["metadata"] = metadata if isinstance(metadata, dict) else json.loads(_to_json(metadata))
    text = triton.InferInput("text", [len(args.texts)], "BYTES")
    data = np.array([t.encode() for t in args.texts], dtype=np.object_)
    if args.protocol == "http":
        text.set_data_from_numpy(data, binary_data=not args.json)
    else:
        text.set_data_from_numpy(data)
    parameters = {k: v for k, v in (("mode", args.mode), ("layer", args.layer)) if v is not None}
    outputs = None
    if args.json:
        outputs = [
            triton.InferRequestedOutput(n, binary_data=False)
            for n in ("label", "probabilities", "exit_layer", "degraded", "label_names")
        ]
    result = client.infer(args.task, [text], outputs=outputs, parameters=parameters or None, headers=headers)
    out["label"] = [_text(v) for v in result.as_numpy("label").tolist()]
    out["probabilities"] = result.as_numpy("probabilities").tolist()
    out["exit_layer"] = result.as_numpy("exit_layer").tolist()
    out["degraded"] = result.as_numpy("degraded").tolist()
    out["label_names"] = [_text(v) for v in result.as_numpy("label_names").tolist()]
    out["model_version"] = (
        result.get_response()["model_version"]
        if args.protocol == "http"
        else result.get_response().model_version
    )
    try:
        bad = triton.InferInput("text", [1], "FP32")
        bad.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        client.infer(args.task, [bad], headers=headers)
        out["bad_datatype"] = "accepted"
    except triton.InferenceServerException as error:  # type: ignore[attr-defined]
        out["bad_datatype"] = f"{error.status()} {error.message()}"
    json.dump(out, sys.stdout)


def _text(value: bytes | str) -> str:
    """BYTES elements: bytes from binary or gRPC tensors, str from JSON ones."""
    return value.decode() if isinstance(value, bytes) else value


def _to_json(message: object) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(message, preserving_proto_field_name=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
