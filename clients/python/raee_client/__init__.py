"""raee-client: a slim Python client of the RAEE inference worker (grpcio and protobuf only)."""

from raee_client.client import AsyncClient, Client, ItemError, RaeeError, Result, RetryPolicy, Task

__all__ = ["AsyncClient", "Client", "ItemError", "RaeeError", "Result", "RetryPolicy", "Task"]
__version__ = "0.1.0"
