"""A transformer backbone whose prediction can be read at every exit, or stopped at one.

Exit ``l`` of a backbone with ``L`` layers is the hidden state after layer ``l``
(exit 0 is the embedding output, the input of layer 1). Both operations read the
hidden state with forward hooks on the model's own layer modules, so any Hugging
Face causal or masked LM whose layers sit in one ``ModuleList`` works unchanged,
and they stop the forward pass by raising from the hook of the exit layer:
layers above it never run, and neither does the full-vocabulary LM head. Only
the prediction position is kept, and only the label words' rows of the head are
multiplied (``docs/method.md`` §1).

A batch whose rows have different exits runs as one pass that drops each row
once it has passed its exit (:meth:`TaskProbe.predict_rows`), so every layer's
weights are read once for all the rows that still need it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from raee.batching import pad_rows
from raee.errors import InputTooLongError, TaskSpecError
from raee.fingerprint import weights_fingerprint
from raee.model_loading import BackboneKind, load_model, load_tokenizer, resolve_source
from raee.tasks import TaskSpec

DEFAULT_MAX_TOKENS = 512

logger = logging.getLogger(__name__)

# The row-dropping self-check: texts of different lengths, and their exits (as functions of
# the layer count). A row leaves at the first layer, where the pass learns its inputs; the
# longest leaves next, so the pass sheds padding; the others leave halfway and at the top.
_CHECK_ROWS = (
    ("Exit at the embeddings", lambda layers: 0),
    ("A much longer sentence, to pad the other three", lambda layers: 1),
    ("Early exits", lambda layers: layers),
    ("Short again here", lambda layers: layers // 2),
)


def backbone_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of backbone ``source`` alone: seconds, where the weights take much longer."""
    return load_tokenizer(resolve_source(source))


def prompt_token_lengths(
    tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, texts: Sequence[str]
) -> list[int]:
    """The token length of each text's prompt (as the backbone will see it, special tokens included)."""
    prompts = [spec.format(text, tokenizer.mask_token) for text in texts]
    return [len(ids) for ids in tokenizer(prompts)["input_ids"]]


class UnsupportedBackboneError(RuntimeError):
    """The model's layout is not one this module knows how to probe."""


@dataclass(frozen=True)
class BackboneId:
    """Identifies a backbone everywhere: stored with each task version, checked at serving."""

    name: str
    num_layers: int
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.name}/L{self.num_layers}/{self.fingerprint}"


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised from a hook to end the forward pass once the exit layer has run."""


class Backbone:
    """A loaded backbone. Use :meth:`for_task` to get a :class:`TaskProbe`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        kind: BackboneKind,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.kind: BackboneKind = kind
        self.max_tokens = max_tokens
        self.layers = _find_layers(model)
        self.num_layers = len(self.layers)
        if kind == "causal":
            tokenizer.padding_side = "right"  # keeps position ids of real tokens unchanged
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        self.transform = _head_transform(model, kind)
        self.id = BackboneId(name=name, num_layers=self.num_layers, fingerprint=weights_fingerprint(model))
        self._drops_rows: bool | None = None

    @property
    def drops_rows(self) -> bool:
        """Whether one pass can drop rows at their exits and read the same states as per-exit passes.

        Checked once, on first use. Dropping a row cuts the batch-first tensors that the
        model hands its layers (masks, rotary tables) to the remaining rows; a layout
        this does not fit is found here, and such a backbone runs one pass per exit
        instead, with a warning. So does one that pads on the left.
        """
        if self._drops_rows is None:
            self._drops_rows = self.tokenizer.padding_side == "right" and self._check_row_dropping()
        return self._drops_rows

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def pad(self, ids: Sequence[Sequence[int]]) -> BatchEncoding:
        """Token ids as one padded batch, on the tokenizer's side."""
        return _padded(ids, self.pad_id, left=self.tokenizer.padding_side == "left")

    @torch.inference_mode()
    def _check_row_dropping(self) -> bool:
        if self.num_layers < 2:
            return False
        encoded = self.pad(self.tokenizer([text for text, _ in _CHECK_ROWS])["input_ids"])
        positions = encoded["attention_mask"].sum(dim=1) - 1  # the last real token (right padding)
        exits = [exit_of(self.num_layers) for _, exit_of in _CHECK_ROWS]
        try:
            dropped = self.row_exit_states(encoded, positions, torch.tensor(exits))
            expected = torch.stack(
                [self.exit_states(encoded, positions, range(e, e + 1))[0][row] for row, e in enumerate(exits)]
            )
        except Exception as error:  # any failure of this layout means: one pass per exit
            logger.warning("%s: rows cannot leave a pass early; one pass per exit", self.id, exc_info=error)
            return False
        error_by_row = (dropped - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-6)
        if float(error_by_row.max()) > 1e-4:
            logger.warning("%s: dropping rows changed their states; one pass per exit", self.id)
            return False
        return True

    @torch.inference_mode()
    def exit_states(
        self, encoded: BatchEncoding, positions: torch.Tensor, exits: range
    ) -> list[torch.Tensor]:
        """States at ``positions`` (one row each) for each exit in ``exits``; stops after the last."""
        rows = torch.arange(positions.shape[0])
        captured: list[torch.Tensor] = []
        last = exits[-1]

        def keep(hidden: torch.Tensor, exit_layer: int) -> None:
            if exit_layer in exits:
                captured.append(hidden[rows, positions])
            if exit_layer == last:
                raise _StopForward

        with _hooks(self.layers, exits, keep):
            self._call(encoded)
        if len(captured) != len(exits):  # pragma: no cover - would mean hooks did not fire
            raise UnsupportedBackboneError("the model did not run through its layer modules")
        return captured

    @torch.inference_mode()
    def row_exit_states(
        self, encoded: BatchEncoding, positions: torch.Tensor, exits: torch.Tensor
    ) -> torch.Tensor:
        """State ``(n, d)`` of row ``i`` at ``positions[i]`` after layer ``exits[i]``, in one pass.

        Rows leave the batch after their exit: the layers above run only for the rows
        that still need them, over the columns that those rows' prompts fill. Needs
        right padding (:attr:`drops_rows`).
        """
        if encoded["input_ids"].shape[1] == len(exits):
            # As many columns as rows: a layer input's rows are told from its sequence by size.
            encoded = _with_pad_column(encoded, self.pad_id)
        dropping = _DroppingRows(exits, positions, encoded["attention_mask"].sum(dim=1))
        with dropping.hooked(self.layers):
            self._call(encoded)
        return dropping.result()

    def _call(self, encoded: BatchEncoding) -> None:
        """Run the model's body on ``encoded``; the hooks end it by raising :class:`_StopForward`."""
        kwargs: dict[str, Any] = {"use_cache": False} if self.kind == "causal" else {}
        with suppress(_StopForward):
            self.model.base_model(**encoded, **kwargs)

    @classmethod
    def load(
        cls,
        source: str,
        *,
        kind: BackboneKind | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> Backbone:
        """Load ``gemma-3-270m`` (the default), a ``.gguf`` file, a folder or a hub id."""
        resolved = resolve_source(source)
        model, tokenizer, detected = load_model(resolved, kind=kind)
        return cls(model, tokenizer, name=resolved.name, kind=detected, max_tokens=max_tokens)

    def label_token_ids(self, spec: TaskSpec) -> list[int]:
        """First sub-token of each label word (with its leading space); collisions are errors."""
        ids = [self._first_token(word) for word in spec.label_words]
        seen: dict[int, str] = {}
        for word, token_id in zip(spec.label_words, ids, strict=True):
            if token_id in seen:
                token = self.tokenizer.convert_ids_to_tokens(token_id)
                raise TaskSpecError(
                    f"labels: words {seen[token_id]!r} and {word!r} share their first token "
                    f"{token!r} under {self.id.name}'s tokenizer; choose distinct label words"
                )
            seen[token_id] = word
        return ids

    def _first_token(self, word: str) -> int:
        ids: list[int] = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if ids and self.tokenizer.convert_ids_to_tokens(ids[0]) in {"▁", "Ġ", " "}:
            ids = ids[1:]  # a bare space marker: the word itself follows
        if not ids:
            raise TaskSpecError(f"labels: word {word!r} has no tokens under {self.id.name}")
        return ids[0]

    def for_task(self, spec: TaskSpec) -> TaskProbe:
        if spec.uses_mask and self.kind != "masked":
            raise TaskSpecError(f"template: {{mask}} needs a masked LM, but {self.id.name} is causal")
        if not spec.uses_mask and self.kind == "masked":
            raise TaskSpecError(f"template: a masked LM ({self.id.name}) needs a {{mask}} slot")
        return TaskProbe(self, spec)


class TaskProbe:
    """A backbone bound to one task: label-word head rows are sliced once, here."""

    def __init__(self, backbone: Backbone, spec: TaskSpec) -> None:
        self.backbone = backbone
        self.spec = spec
        self.label_ids = backbone.label_token_ids(spec)
        output = backbone.model.get_output_embeddings()  # type: ignore[no-untyped-call]
        if output is None:
            raise UnsupportedBackboneError(f"{backbone.id.name} has no output embeddings (LM head)")
        self.head_weight = output.weight[self.label_ids].detach().clone()
        bias = getattr(output, "bias", None)
        self.head_bias = None if bias is None else bias[self.label_ids].detach().clone()
        self.softcap: float | None = getattr(backbone.model.config, "final_logit_softcapping", None)

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def prompts(self, texts: Sequence[str]) -> list[str]:
        return [self.spec.format(text, self.backbone.tokenizer.mask_token) for text in texts]

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, for length-bucketed batching and limit checks."""
        return prompt_token_lengths(self.backbone.tokenizer, self.spec, texts)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's prompt as token ids (unpadded): check lengths, then :meth:`predict_tokens`."""
        if not texts:
            raise ValueError("texts: need at least one text")
        ids: list[list[int]] = self.backbone.tokenizer(self.prompts(texts))["input_ids"]
        return ids

    @torch.inference_mode()
    def exit_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Label-word probabilities at every exit: shape ``(n, L + 1, C)``, one forward pass."""
        encoded, positions = self._encode(texts)
        states = self.backbone.exit_states(encoded, positions, range(self.num_layers + 1))
        return self._probabilities(torch.stack(states, dim=1)).numpy()

    @torch.inference_mode()
    def predict_at(self, texts: Sequence[str], exit_layer: int) -> np.ndarray:
        """Label-word probabilities at one exit, ``(n, C)``, running layers ``1..exit_layer`` only."""
        self._check_exit(exit_layer)
        return self.predict_tokens(self.tokenize(texts), exit_layer)

    @torch.inference_mode()
    def predict_tokens(self, ids: Sequence[Sequence[int]], exit_layer: int) -> np.ndarray:
        """:meth:`predict_at` for prompts already tokenised by :meth:`tokenize` (tokenised once)."""
        self._check_exit(exit_layer)
        encoded, positions = self._pad(ids)
        (state,) = self.backbone.exit_states(encoded, positions, range(exit_layer, exit_layer + 1))
        return self._probabilities(state).numpy()

    @torch.inference_mode()
    def predict_rows(self, ids: Sequence[Sequence[int]], exits: Sequence[int]) -> np.ndarray:
        """:meth:`predict_tokens` with an exit per row, ``(n, C)``: one pass, rows leave at their exits.

        Where at most one of the exits lies above the embeddings, separate passes read
        each layer's weights once as well, and pad each group only to its own longest
        prompt: those batches (and backbones that cannot drop rows) run
        :meth:`predict_per_exit`.
        """
        if len(exits) != len(ids):
            raise ValueError(f"exits: {len(exits)} exits for {len(ids)} prompts")
        for exit_layer in exits:
            self._check_exit(exit_layer)
        distinct = set(exits)
        if len(distinct) == 1:
            return self.predict_tokens(ids, exits[0])
        if len(distinct - {0}) < 2 or not self.backbone.drops_rows:
            return self.predict_per_exit(ids, exits)
        encoded, positions = self._pad(ids)
        states = self.backbone.row_exit_states(encoded, positions, torch.tensor(list(exits)))
        return self._probabilities(states).numpy()

    @torch.inference_mode()
    def predict_per_exit(self, ids: Sequence[Sequence[int]], exits: Sequence[int]) -> np.ndarray:
        """:meth:`predict_rows` as one :meth:`predict_tokens` pass per distinct exit."""
        probabilities = np.zeros((len(ids), self.spec.num_labels), dtype=np.float32)
        for exit_layer in sorted(set(exits)):
            rows = [i for i, e in enumerate(exits) if e == exit_layer]
            probabilities[rows] = self.predict_tokens([ids[i] for i in rows], exit_layer)
        return probabilities

    @torch.inference_mode()
    def states_until(self, ids: Sequence[Sequence[int]], stop: Callable[[int], bool]) -> list[torch.Tensor]:
        """Prediction-position states at exits ``0, 1, ...``: ``n`` rows each, one list item per exit.

        After each exit ``stop(exit)`` is asked whether to end the pass; it ends at the
        last layer anyway. ``stop`` may change its answer while this runs (another
        thread learns the exit meanwhile).
        """
        encoded, positions = self._pad(ids)
        rows = torch.arange(positions.shape[0])
        captured: list[torch.Tensor] = []

        def keep(hidden: torch.Tensor, exit_layer: int) -> None:
            captured.append(hidden[rows, positions])
            if exit_layer == self.num_layers or stop(exit_layer):
                raise _StopForward

        self._forward(encoded, range(self.num_layers + 1), keep)
        return captured

    @torch.inference_mode()
    def probabilities_of(self, states: torch.Tensor) -> np.ndarray:
        """Label-word probabilities ``(n, C)`` of states ``(n, d)`` read from :meth:`states_until`."""
        return self._probabilities(states).numpy()

    # -- internals ----------------------------------------------------------------------

    def _check_exit(self, exit_layer: int) -> None:
        if not 0 <= exit_layer <= self.num_layers:
            raise ValueError(f"exit_layer: {exit_layer} is outside 0..{self.num_layers}")

    def _encode(self, texts: Sequence[str]) -> tuple[BatchEncoding, torch.Tensor]:
        return self._pad(self.tokenize(texts))

    def _pad(self, ids: Sequence[Sequence[int]]) -> tuple[BatchEncoding, torch.Tensor]:
        """Pad token ids into a batch (on the tokenizer's side) and find each prediction position."""
        if not ids:
            raise ValueError("texts: need at least one text")
        tokenizer = self.backbone.tokenizer
        encoded = self.backbone.pad(ids)
        lengths = encoded["attention_mask"].sum(dim=1)
        too_long = torch.nonzero(lengths > self.backbone.max_tokens).flatten()
        if too_long.numel():
            index = int(too_long[0])
            raise InputTooLongError(index, int(lengths[index]), self.backbone.max_tokens)
        if self.backbone.kind == "causal":
            return encoded, lengths - 1
        is_mask = encoded["input_ids"] == tokenizer.mask_token_id
        if not torch.all(is_mask.sum(dim=1) == 1):
            raise ValueError("template: each prompt must contain exactly one mask token")
        return encoded, is_mask.int().argmax(dim=1)

    def _forward(
        self, encoded: BatchEncoding, exits: range, keep: Callable[[torch.Tensor, int], None]
    ) -> None:
        """Run the model with ``keep`` hooked at ``exits``; ``keep`` ends the pass by raising."""
        with _hooks(self.backbone.layers, exits, keep):
            self.backbone._call(encoded)

    def _probabilities(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.backbone.transform(states) @ self.head_weight.T
        if self.head_bias is not None:
            logits = logits + self.head_bias
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.softmax(logits.float(), dim=-1)


def _padded(ids: Sequence[Sequence[int]], pad_id: int, *, left: bool) -> BatchEncoding:
    """What ``tokenizer(prompts, padding=True, return_tensors="pt")`` returns, from ids."""
    input_ids = pad_rows(ids, pad_id, left=left)
    mask = pad_rows([[1] * len(row) for row in ids], 0, left=left)
    return BatchEncoding({"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)})


def _with_pad_column(encoded: BatchEncoding, pad_id: int) -> BatchEncoding:
    """``encoded`` (right-padded) with one more padding column; real tokens do not see it."""
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    rows = ids.shape[0]
    return BatchEncoding(
        {
            "input_ids": torch.cat([ids, ids.new_full((rows, 1), pad_id)], dim=1),
            "attention_mask": torch.cat([mask, mask.new_zeros((rows, 1))], dim=1),
        }
    )


@contextmanager
def _hooks(layers: nn.ModuleList, exits: range, keep: Callable[[torch.Tensor, int], None]) -> Iterator[None]:
    """Hook the modules that produce the wanted exits: layer 1's input is exit 0.

    Hooks belong to the shared layer modules, so a pass running in another thread
    at the same time (a request served during the worker's warm-up) fires them too.
    Each hook acts only in the thread that registered it: otherwise it would stop the
    other pass at this pass's last exit and read that pass's states as its own.
    """
    owner = threading.get_ident()
    handles = []
    if 0 in exits:

        def before_first(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if threading.get_ident() == owner:
                keep(args[0] if args else kwargs["hidden_states"], 0)

        handles.append(layers[0].register_forward_pre_hook(before_first, with_kwargs=True))
    for exit_layer in exits:
        if exit_layer == 0:
            continue

        def after(_module: nn.Module, _args: Any, output: Any, exit_layer: int = exit_layer) -> None:
            if threading.get_ident() == owner:
                keep(output[0] if isinstance(output, tuple) else output, exit_layer)

        handles.append(layers[exit_layer - 1].register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# Where the sequence axis lies in the layer inputs that Hugging Face models name alike.
_SEQUENCE_AXES: dict[str, tuple[int, ...]] = {
    "attention_mask": (-2, -1),  # (..., query, key); a broadcast query axis of 1 stays
    "position_embeddings": (-2,),  # (cos, sin), each (..., sequence, dim)
    "position_ids": (-1,),
    "cache_position": (-1,),
}


class _DroppingRows:
    """Pre-hooks that read each row's state at its exit, then drop the row from the batch.

    The model computes the per-row inputs of its layers once, for the whole batch
    (attention masks, and rotary tables where they are per row), and hands the same
    tensors to every layer. Once rows have left, each layer's pre-hook hands it those
    tensors' rows for the rows still in the pass: every tensor argument with two or
    more dimensions whose first is the batch size, also inside tuples.

    The pass (right-padded, of prompt ``lengths``) also sheds the padding columns
    that no remaining row needs: the hidden states and the inputs named in
    ``_SEQUENCE_AXES`` are cut to the longest remaining prompt. Real tokens never
    attend to padding, so their states do not change. If the first layer's inputs
    include one of another name with an axis of the padded length, the pass keeps its
    padding. :attr:`Backbone.drops_rows` checks all of it against per-exit passes.
    """

    def __init__(self, exits: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor | None) -> None:
        self.exits = exits
        self.positions = positions
        self.lengths = lengths
        self.batch = len(exits)
        self.last = int(exits.max())
        self.live = torch.arange(self.batch)  # rows of the original batch now in the pass
        self.padded = 0  # the batch's padded length, learnt at the first layer
        self.length = 0  # the length now handed to the layers
        self.states: torch.Tensor | None = None
        # id of a model tensor -> (that tensor, what the layers get now); holding it keeps its id unique
        self._fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rows_read = 0

    @contextmanager
    def hooked(self, layers: nn.ModuleList) -> Iterator[None]:
        owner = threading.get_ident()  # see _hooks: other threads' passes share these modules

        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], exit_layer: int) -> Any:
            if threading.get_ident() != owner:
                return None
            return self._at_layer_input(_positional_names(module), args, kwargs, exit_layer)

        def after(_module: nn.Module, _args: Any, output: Any) -> None:
            if threading.get_ident() == owner:
                self._read_exiting(output[0] if isinstance(output, tuple) else output, self.last)
                raise _StopForward

        # Layer i's input is exit i: its pre-hook reads and drops; the last layer's output needs a hook.
        handles = [
            layers[index].register_forward_pre_hook(
                functools.partial(before, exit_layer=index), with_kwargs=True
            )
            for index in range(min(self.last + 1, len(layers)))
        ]
        if self.last == len(layers):
            handles.append(layers[-1].register_forward_hook(after))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _at_layer_input(
        self, names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any], exit_layer: int
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """At exit ``exit_layer``, the input of layer index ``exit_layer``: read, drop, pass on.

        ``names`` name the layer's positional parameters, so that inputs passed by
        position are known by name too ("" past the signature's).
        """
        hidden = args[0] if args else kwargs["hidden_states"]
        others = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        inputs = [*zip(names[1:] + ("",) * len(args), args[1:], strict=False), *others.items()]
        if not self.padded:
            self.padded = self.length = hidden.shape[1]
            if self.lengths is not None and not self._trimmable(inputs):
                self.lengths = None
        self._read_exiting(hidden, exit_layer)
        going_on = self.exits[self.live] > exit_layer
        if not bool(going_on.any()):
            raise _StopForward
        if not bool(going_on.all()):
            self.live = self.live[going_on]
            hidden = hidden[going_on]
            if self.lengths is not None:
                self.length = int(self.lengths[self.live].max())
                hidden = hidden[:, : self.length].contiguous()
            self._fitted.clear()
        if len(self.live) == self.batch:
            return None
        fitted = [self._fit(name, value) for name, value in inputs]
        positional = len(args) - 1 if args else 0
        new_kwargs = dict(zip(others, fitted[positional:], strict=True))
        if args:
            return (hidden, *fitted[:positional]), new_kwargs
        return args, {**new_kwargs, "hidden_states": hidden}

    def _read_exiting(self, hidden: torch.Tensor, exit_layer: int) -> None:
        here = self.exits[self.live] == exit_layer
        if not bool(here.any()):
            return
        rows = self.live[here]
        if self.states is None:
            self.states = hidden.new_empty((self.batch, hidden.shape[-1]))
        self.states[rows] = hidden[here][torch.arange(len(rows)), self.positions[rows]]
        self._rows_read += len(rows)

    def result(self) -> torch.Tensor:
        if self.states is None or self._rows_read != self.batch:  # pragma: no cover - hooks did not fire
            raise UnsupportedBackboneError("the model did not run through its layer modules")
        return self.states

    def _fit(self, name: str, value: Any) -> Any:
        """``value`` for the rows, and the length, now in the pass."""
        if isinstance(value, tuple | list):
            items = [self._fit(name, v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a NamedTuple
        if not isinstance(value, torch.Tensor):
            return value
        cached = self._fitted.get(id(value))
        if cached is not None:
            return cached[1]
        fitted = value
        if value.dim() >= 2 and value.shape[0] == self.batch:
            fitted = fitted[self.live]
        if self.length != self.padded:
            # Never the first axis: it is the rows' (or, for a 1-D input, the sequence's alone).
            axes = {axis % fitted.dim() for axis in _SEQUENCE_AXES.get(name, ())} - {0}
            if fitted.dim() == 1 and name in _SEQUENCE_AXES:
                axes = {0}
            for axis in sorted(axes):
                if fitted.shape[axis] == self.padded:
                    fitted = fitted.narrow(axis, 0, self.length).contiguous()
        self._fitted[id(value)] = (value, fitted)
        return fitted

    def _trimmable(self, inputs: list[tuple[str, Any]]) -> bool:
        """No input of the first layer but the known ones has an axis of the padded length (rows aside)."""
        others = [value for name, value in inputs if name not in _SEQUENCE_AXES]
        while others:
            value = others.pop()
            if isinstance(value, tuple | list):
                others.extend(value)
            elif isinstance(value, torch.Tensor):
                rows_first = value.dim() >= 2 and value.shape[0] == self.batch
                if self.padded in value.shape[1 if rows_first else 0 :]:
                    return False
        return True


@functools.cache
def _signature_names(forward: Callable[..., Any]) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in inspect.signature(forward).parameters.values() if p.kind in kinds)


def _positional_names(module: nn.Module) -> tuple[str, ...]:
    """A layer's positional parameters, ``hidden_states`` first (read once per layer class)."""
    return _signature_names(type(module).forward)[1:]  # without self


def _find_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The model's transformer layers: the ModuleList of ``num_hidden_layers`` blocks."""
    expected = model.config.get_text_config().num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == expected:
            return module
    raise UnsupportedBackboneError(f"no ModuleList of {expected} layers in {type(model).__name__}")


def _head_transform(model: PreTrainedModel, kind: BackboneKind) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the model applies to a hidden state before the vocabulary projection."""
    if kind == "causal":
        norm = getattr(model.base_model, "norm", None) or getattr(model.base_model, "final_layernorm", None)
        if norm is None:
            raise UnsupportedBackboneError(f"{type(model).__name__}: no final norm found")
        return norm  # type: ignore[no-any-return]
    lm_head = getattr(model, "lm_head", None)  # RoBERTa family: dense -> gelu -> layer_norm
    if lm_head is not None and hasattr(lm_head, "dense") and hasattr(lm_head, "layer_norm"):
        return lambda h: lm_head.layer_norm(nn.functional.gelu(lm_head.dense(h)))
    predictions = getattr(getattr(model, "cls", None), "predictions", None)  # BERT family
    if predictions is not None and hasattr(predictions, "transform"):
        return predictions.transform  # type: ignore[no-any-return]
    raise UnsupportedBackboneError(f"{type(model).__name__}: unknown masked-LM head layout")
