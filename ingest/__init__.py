"""Batch ingest: run the backbone over a labelled corpus and publish its exit information."""

from ingest.job import IngestResult, length_sorted_batches, render_summary, run_ingest

__all__ = ["IngestResult", "length_sorted_batches", "render_summary", "run_ingest"]
