"""Both services in one process on one machine: ``raee up``, the demo, and end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from inference_service import server as inference_server
from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.settings import InferenceSettings, RetrievalSettings
from retrieval_service import server as retrieval_server


@dataclass
class ServicePair:
    retrieval: retrieval_server.RetrievalServer
    inference: inference_server.InferenceServer

    @property
    def inference_address(self) -> str:
        return f"localhost:{self.inference.port}"

    @property
    def http_url(self) -> str | None:
        """The worker's REST base URL, or None when its REST port is off."""
        port = self.inference.http_port
        return f"http://localhost:{port}" if port is not None else None

    @property
    def retrieval_address(self) -> str:
        return f"localhost:{self.retrieval.port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.inference.stop(grace_s)
        await self.retrieval.stop(grace_s)


async def start_pair(
    retrieval_config: RetrievalSettings,
    inference_config: InferenceSettings,
    *,
    backbone: Backbone | None = None,
    encoder: QueryEncoder | None = None,
) -> ServicePair:
    """Start the retrieval service, then the worker pointed at it (port 0 picks free ports)."""
    retrieval = await retrieval_server.start(retrieval_config, encoder=encoder)
    token = (
        inference_config.retrieval_token.get_secret_value() or retrieval_config.auth_token.get_secret_value()
    )
    inference_config = inference_config.model_copy(
        update={"retrieval_addr": f"localhost:{retrieval.port}", "retrieval_token": SecretStr(token)}
    )
    try:
        inference = await inference_server.start(inference_config, backbone=backbone)
    except BaseException:
        await retrieval.stop(0)
        raise
    return ServicePair(retrieval, inference)
