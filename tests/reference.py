"""An independent reference for a causal LM's exit probabilities, written from the paper's definition.

It uses only the Hugging Face model's own forward pass (``output_hidden_states``)
and its tokenizer: none of the project's probing code (no hooks, no TaskProbe, no
prompt formatting of raee.tasks). One text at a time, without padding, so the
prediction position is simply the last token.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def label_token_ids(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[int]:
    """The first sub-token of each label word, with the leading space the prompt puts before it."""
    return [tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in words]


@torch.no_grad()
def exit_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, words: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_exit, model_head)``: softmax over the label words at every exit 0..L, and at exit L
    from the model's own logits (its own final norm, LM head and soft-capping).
    """
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model(**inputs, output_hidden_states=True)
    ids = label_token_ids(tokenizer, words)
    head = output.logits[0, -1, ids].double().softmax(-1)
    norm = model.model.norm
    softcap = getattr(model.config, "final_logit_softcapping", None)
    rows = model.lm_head.weight[ids]
    per_exit = []
    last = len(output.hidden_states) - 1
    for layer, hidden in enumerate(output.hidden_states):
        state = hidden[0, -1]
        # Hugging Face applies the final norm to its last hidden state itself.
        normed = state if layer == last else norm(state)
        logits = normed @ rows.T
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        per_exit.append(logits.double().softmax(-1))
    return torch.stack(per_exit), head
