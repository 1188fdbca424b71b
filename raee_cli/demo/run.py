"""``raee demo``: start the pair on the embedded store, ingest the demo task if absent, classify."""

from __future__ import annotations

import time
from pathlib import Path

from raee.backbone import Backbone
from raee.data import read_examples
from raee.defaults import DEFAULT_ENCODER_RUNTIME, EncoderRuntime
from raee.encoder import QueryEncoder
from raee.errors import TaskNotFoundError
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR, demo_spec
from raee_cli.pair import start_pair


async def run_demo(
    home: Path,
    backbone_source: str,
    encoder_source: str,
    encoder_runtime: EncoderRuntime = DEFAULT_ENCODER_RUNTIME,
) -> int:
    """Start the pair on the embedded store, ingest the demo task if absent, classify over gRPC."""
    from ingest import render_summary, run_ingest

    spec = demo_spec()
    backbone = Backbone.load(backbone_source)
    encoder = QueryEncoder(encoder_source, runtime=encoder_runtime)
    store = open_store(home=home)
    try:
        version = store.get_task(spec.name)
        print(f"demo task {spec.name} already published (version {version.version}, {version.points} points)")
    except TaskNotFoundError:
        examples, _ = read_examples(DEMO_DIR / "train.jsonl", spec)
        result = run_ingest(spec, examples, backbone=backbone, encoder=encoder, store=store)
        print(render_summary(result))
    finally:
        store.close()

    pair = await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=home, store_url=""),
        InferenceSettings(port=0, metrics_port=0, http_port=-1),
        backbone=backbone,
        encoder=encoder,
    )
    try:
        tests, _ = read_examples(DEMO_DIR / "test.jsonl", spec)
        print(f"\nclassifying {len(tests)} sentences over gRPC at {pair.inference_address}")
        print(f"{'text':52} {'gold':9} {'RAEE':9} {'exit':>4} {'FULL':9} {'ms RAEE/FULL':>13}")
        right = {"raee": 0, "full": 0}
        async with InferenceClient(pair.inference_address) as client:
            for example in tests:
                answers, round_trip_ms = {}, {}
                for mode in ("raee", "full"):
                    started = time.perf_counter()
                    answers[mode] = await client.classify(spec.name, example.text, mode)
                    round_trip_ms[mode] = 1000 * (time.perf_counter() - started)
                    right[mode] += answers[mode].label == example.label
                raee, full = answers["raee"], answers["full"]
                print(
                    f"{example.text[:52]:52} {example.label:9} {raee.label:9} {raee.exit_layer:>4} "
                    f"{full.label:9} {round_trip_ms['raee']:6.1f}/{round_trip_ms['full']:<6.1f}"
                )
        n = len(tests)
        full_exit = backbone.num_layers
        print(f"\naccuracy: RAEE {right['raee']}/{n}, full model {right['full']}/{n} (exit {full_exit})")
    finally:
        await pair.stop()
    print("services stopped cleanly")
    return 0
