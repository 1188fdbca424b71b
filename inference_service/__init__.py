"""The inference worker: retrieval-chosen exit, truncated backbone, over gRPC (raee.v1.InferenceService)."""
