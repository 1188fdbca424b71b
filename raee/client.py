"""A small client of the services, used by ``raee classify``, the demo, ``raee eval`` and the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType

from raee.exit_info import ExitInfo
from raee.serving.security import bearer_metadata, channel_credentials, open_channel
from raee.store import Neighbour
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, inference_pb2_grpc, retrieval_pb2

# Classify only reads: a call that fails UNAVAILABLE (its connection closed by the
# server's maximum connection age, or a worker going away) is retried at once.
RETRY_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "raee.v1.InferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
MODES = {"raee": inference_pb2.MODE_RAEE, "full": inference_pb2.MODE_FULL, "fixed": inference_pb2.MODE_FIXED}


def classify_request(
    task: str, text: str, mode: str = "raee", layer: int | None = None, k: int | None = None
) -> inference_pb2.ClassifyRequest:
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {sorted(MODES)}")
    return inference_pb2.ClassifyRequest(task=task, text=text, mode=MODES[mode], layer=layer, k=k)


def neighbour_from_message(message: retrieval_pb2.Neighbour, spec: TaskSpec) -> Neighbour:
    """A neighbour of an exit-distribution response, as the store returned it to the service."""
    return Neighbour(
        point_id=message.id,
        similarity=message.similarity,
        example_id=message.example_id,
        text=message.text,
        label=message.label,
        label_index=spec.label_index(message.label),
        exit=ExitInfo(tuple(message.exit_layers), tuple(message.exit_probs)),
    )


class InferenceClient:
    """``async with InferenceClient("localhost:50052") as client: await client.classify(...)``."""

    def __init__(self, address: str, *, timeout_s: float = 30.0, token: str = "", tls_ca: str = "") -> None:
        self.channel = open_channel(
            address, channel_credentials(tls_ca), [("grpc.service_config", RETRY_UNAVAILABLE)]
        )
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = bearer_metadata(token)

    async def classify(
        self, task: str, text: str, mode: str = "raee", layer: int | None = None, k: int | None = None
    ) -> inference_pb2.ClassifyResponse:
        response: inference_pb2.ClassifyResponse = await self.stub.Classify(
            classify_request(task, text, mode, layer, k), timeout=self.timeout_s, metadata=self.metadata
        )
        return response

    async def classify_batch(
        self, task: str, texts: Sequence[str], mode: str = "raee", layer: int | None = None
    ) -> inference_pb2.ClassifyBatchResponse:
        request = inference_pb2.ClassifyBatchRequest(
            requests=[classify_request(task, text, mode, layer) for text in texts]
        )
        response: inference_pb2.ClassifyBatchResponse = await self.stub.ClassifyBatch(
            request, timeout=self.timeout_s, metadata=self.metadata
        )
        return response

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
