"""Content fingerprints of model weights, used to tell backbones and encoders apart."""

from __future__ import annotations

import hashlib

import torch

_SAMPLE = 64


def weights_fingerprint(module: torch.nn.Module) -> str:
    """12 hex digits over every tensor's name, shape, dtype and its first and last values.

    Cheap (no full pass over the weights) yet changes with any fine-tune, which
    touches essentially every tensor; independent of the file format the weights
    came from, so a GGUF model and its converted copy share a fingerprint.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(torch.cat([flat[:_SAMPLE], flat[-_SAMPLE:]]).float().numpy().tobytes())
    return digest.hexdigest()[:12]
