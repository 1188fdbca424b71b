"""A small client of the services, used by ``raee classify``, the demo, ``raee eval`` and the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType

from raee.serving.security import bearer_metadata, channel_credentials, open_channel
from raee.v1 import inference_pb2, inference_pb2_grpc
from raee.wire.inference import Mode, classify_request

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
        self,
        task: str,
        text: str,
        mode: Mode | str = Mode.RAEE,
        layer: int | None = None,
        k: int | None = None,
    ) -> inference_pb2.ClassifyResponse:
        response: inference_pb2.ClassifyResponse = await self.stub.Classify(
            classify_request(task, text, mode, layer, k), timeout=self.timeout_s, metadata=self.metadata
        )
        return response

    async def classify_batch(
        self, task: str, texts: Sequence[str], mode: Mode | str = Mode.RAEE, layer: int | None = None
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
