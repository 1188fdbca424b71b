"""Batch ingest: run the backbone over a labelled corpus and publish its exit information."""

from ingest.job import IngestResult, Shard, length_sorted_batches, probe_batch, render_summary, run_ingest

__all__ = ["IngestResult", "Shard", "length_sorted_batches", "probe_batch", "render_summary", "run_ingest"]
