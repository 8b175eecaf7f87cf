"""The running batch's key/value cache: transformers' dynamic cache, appended to in place."""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

HEADROOM = 64  # columns a layer's buffers keep free for the next steps' keys and values


class AppendingLayer(DynamicLayer):
    """A DynamicLayer whose steps append in place. DynamicLayer.update concatenates, so every
    decoding step copied each layer's whole key/value cache: on the embedded model, a third of a
    step at 16 rows and 200 columns. Here keys and values are views of buffers with HEADROOM more
    columns, and a step writes only its own. The buffers are made again (one copy, as a
    concatenation would) when full, or when keys and values no longer view them: rows left, a
    batch joined, columns were cut (RunningBatch replaces the tensors; the values stay the same).
    """

    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            return super().update(key_states, value_states, *args, **kwargs)
        length = self.keys.shape[-2]
        total = length + key_states.shape[-2]
        if not self._buffers_hold(total):
            shape = (*self.keys.shape[:-2], total + HEADROOM, self.keys.shape[-1])
            self.key_buffer, self.value_buffer = self.keys.new_empty(shape), self.values.new_empty(shape)
            self.key_buffer[..., :length, :] = self.keys
            self.value_buffer[..., :length, :] = self.values
        self.key_buffer[..., length:total, :] = key_states
        self.value_buffer[..., length:total, :] = value_states
        self.keys, self.values = self.key_buffer[..., :total, :], self.value_buffer[..., :total, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """The rows that stay, selected with their buffers' free columns: one copy, as before."""
        length = self.get_seq_length()
        if not length or not self._buffers_hold(length):
            return super().batch_select_indices(indices)
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[..., :length, :], self.value_buffer[..., :length, :]

    def _buffers_hold(self, total: int) -> bool:
        """Whether keys and values are still the buffers' first columns, with room up to `total`."""
        return all(
            buffer is not None
            and tensor.data_ptr() == buffer.data_ptr()
            and tensor.shape[:-2] == buffer.shape[:-2]
            and tensor.stride() == buffer.stride()
            and buffer.shape[-2] >= total
            for tensor, buffer in ((self.keys, self.key_buffer), (self.values, self.value_buffer))
        )


def full_attention_cache() -> DynamicCache:
    """A cache whose every layer keeps all its keys and values, sliding-window layers too.

    Built from a model's config, transformers' cache gives sliding-window layers (Mistral, Gemma 2
    and 3) a layer that drops the keys past the window and cannot be cut back once it has: the
    prompt-then-target pass is cut back to the prompt, and the running batch lays rows side by
    side. Kept whole, the window still holds: the model's mask leaves out what lies past it.
    """
    return DynamicCache()


def append_in_place(cache: DynamicCache) -> None:
    """Makes the cache's plain dynamic layers AppendingLayers (in place; sliding-window and other
    layers keep their own update)."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__ = AppendingLayer
