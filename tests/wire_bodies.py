"""Raw request bodies for wire-level fuzzing: random bytes and mutations of valid messages.

Shared by ``tests/test_fuzz.py`` (a few hundred, in CI) and ``benchmarks/wire_fuzz.py``
(the 10,000-request campaign).
"""

from __future__ import annotations

import random

from raee.v1 import inference_pb2, retrieval_pb2

INFERENCE = "raee.v1.InferenceService"
RETRIEVAL = "raee.v1.RetrievalService"


def seeds(task: str) -> dict[str, list[bytes]]:
    """Valid bodies of every method of both services, keyed by method path."""
    classify = [
        inference_pb2.ClassifyRequest(task=task, text="a fine film"),
        inference_pb2.ClassifyRequest(task=task, text="dull", mode=inference_pb2.MODE_FIXED, layer=3),
        inference_pb2.ClassifyRequest(task=task, text="ok", k=5, include_distribution=True),
    ]
    exit_requests = [
        retrieval_pb2.ExitDistributionRequest(task=task, text="a fine film", k=4, include_neighbours=True),
        retrieval_pb2.ExitDistributionRequest(
            task=task, embedding=retrieval_pb2.Embedding(values=[0.1] * 384)
        ),
    ]
    return {
        f"/{INFERENCE}/Classify": [m.SerializeToString() for m in classify],
        f"/{INFERENCE}/ClassifyBatch": [
            inference_pb2.ClassifyBatchRequest(requests=classify).SerializeToString()
        ],
        f"/{RETRIEVAL}/GetExitDistribution": [m.SerializeToString() for m in exit_requests],
        f"/{RETRIEVAL}/BatchGetExitDistribution": [
            retrieval_pb2.BatchExitDistributionRequest(requests=exit_requests).SerializeToString()
        ],
        f"/{RETRIEVAL}/ListTasks": [retrieval_pb2.ListTasksRequest().SerializeToString()],
        f"/{RETRIEVAL}/GetTask": [retrieval_pb2.GetTaskRequest(task=task).SerializeToString()],
    }


# Byte patterns that break protobuf parsers: overlong varints, huge lengths, bad wire types.
NASTY = [
    b"\x08" + b"\xff" * 10 + b"\x01",
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\x0f",
    b"\x0b\x0c",
    b"\x0a\x05ab",
    b"\x12\x02\xc3\x28",  # invalid UTF-8 in a string field
    b"\x0a\x02\xed\xa0",  # a lone surrogate
    b"\x00",
]


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    kind = rng.randrange(7)
    if kind == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1 and data:  # truncate
        del data[rng.randrange(len(data)) :]
    elif kind == 2:  # insert random bytes
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 3:  # append a nasty pattern
        data += rng.choice(NASTY)
    elif kind == 4 and data:  # overwrite a byte with an extreme one
        data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
    elif kind == 5:  # repeat the message (repeated fields, last-one-wins scalars)
        data = data * rng.randint(2, 4)
    else:  # splice in a nasty pattern
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice(NASTY)
    return bytes(data)


def bodies(rng: random.Random, task: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` (method, body) pairs, spread over every method: a third random bytes, the rest mutations."""
    by_method = seeds(task)
    methods = sorted(by_method)
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        method = methods[i % len(methods)]
        if rng.random() < 1 / 3:
            body = rng.randbytes(rng.choice([0, 1, 2, 5, 17, 64, 300]))
        else:
            body = rng.choice(by_method[method])
            for _ in range(rng.randint(1, 3)):
                body = mutate(rng, body)
        out.append((method, body))
    return out
