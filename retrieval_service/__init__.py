"""The retrieval service: exit distributions from the exit store, over gRPC (raee.v1.RetrievalService)."""
