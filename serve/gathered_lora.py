"""Mixed-adapter LoRA batches in one gathered forward per layer, as punica and S-LoRA do.

PEFT answers a batch that mixes adapters (`adapter_names=`) with a Python loop over the batch's
adapters in every LoRA layer, copying each adapter's rows out and back, and it passes the names
down by scanning every module of the model on each forward. Here every LoRA layer keeps the
mixed-batch adapters' factors stacked, one slot per adapter (slot 0: zeros, the base model's
rows), padded with zeros to the largest rank, and adds each row's own update with two batched
matrix products on the factors gathered by the row's slot:

    output[row] = base_layer(x)[row] + (x[row] @ A[slot]^T @ B[slot]^T) * scaling[slot]

which is PEFT's LoRA Linear forward (lora_B(lora_A(x)) * scaling; dropout is the identity in
eval) row by row; zero-padded ranks and the zero slot add exact zeros. The base layer is called
as PEFT calls it (a bitsandbytes 4-bit layer for QLoRA), by PEFT's own layer with its adapters
switched off. The rows' slots are set once per forward (`rows`), read by a forward hook on each
LoRA layer. Each layer's factors are gathered for the rows once and kept while the rows stay the
same: a decoding step then adds two batched products per layer, not two gathers besides.
"""

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

BASE_SLOT = 0  # the base model's rows: an adapter whose factors are zeros


@dataclass
class _StackedLayer:
    a: torch.Tensor  # [slots, rank, in features]
    b: torch.Tensor  # [slots, out features, rank]
    scaling: torch.Tensor  # [slots]

    def for_rows(self, row_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's A^T [rows, in, rank] and scaling * B^T [rows, rank, out], contiguous."""
        rows = row_slots.shape[0]
        a_rows = self.a[row_slots].transpose(1, 2).contiguous()
        scaled_b_rows = (self.b[row_slots] * self.scaling[row_slots].view(rows, 1, 1)).transpose(1, 2)
        return a_rows, scaled_b_rows.contiguous()


class GatheredLora:
    """The stacked factors of the mixed-batch adapters injected into one PEFT model, and the
    hooks that add each row's update while the model runs in gathered mode."""

    def __init__(self, peft_model: nn.Module):
        self.peft_model = peft_model
        self.slots: dict[str, int] = {}  # adapter id -> its slot (from 1)
        self.engaged = False  # PEFT's layers add no adapter of their own; the hooks add each row's
        self._layers: dict[LoraLayer, _StackedLayer] = {}
        self._hooks = []
        self._row_slots: torch.Tensor | None = None  # [rows], set for one forward; None: no updates
        # The last rows' slots, as a tensor, and each layer's factors gathered for them: the steps
        # of one running batch ask for the same slots again and again.
        self._last_slots: tuple[list[int], torch.Tensor] | None = None
        self._row_factors: dict[LoraLayer, tuple[torch.Tensor, torch.Tensor]] = {}

    def sync(self, adapter_ids: Iterable[str]) -> None:
        """Stacks these adapters' factors anew where the set differs from the one stacked (on load
        and eviction only, never per forward)."""
        adapter_ids = sorted(adapter_ids)
        if adapter_ids == sorted(self.slots):
            return
        engaged = self.engaged
        self.close()
        self.slots = {adapter_id: slot for slot, adapter_id in enumerate(adapter_ids, start=BASE_SLOT + 1)}
        for layer in self.peft_model.modules():
            if isinstance(layer, LoraLayer) and any(a in layer.lora_A for a in adapter_ids):
                self._layers[layer] = _stack(layer, adapter_ids)
                self._hooks.append(layer.register_forward_hook(self._add_row_updates))
            elif isinstance(layer, LoraLayer) and any(a in layer.lora_embedding_A for a in adapter_ids):
                raise ValueError(
                    f"gathered LoRA: embedding layers are not supported ({type(layer).__name__})"
                )
        if engaged:
            self.engage()

    def engage(self) -> None:
        """Switches PEFT's layers to their base layer alone, so that the hooks add the updates."""
        if not self.engaged:
            self._enable_peft_layers(False)
            self.engaged = True

    def disengage(self) -> None:
        """Gives PEFT's layers their active adapter back (a batch of one adapter, set by PEFT)."""
        if self.engaged:
            self._enable_peft_layers(True)
            self.engaged = False

    def close(self) -> None:
        """Removes the hooks and stacks; PEFT's layers answer as before."""
        self.disengage()
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._layers, self.slots = [], {}, {}
        self._last_slots, self._row_factors = None, {}

    @contextmanager
    def rows(self, adapter_ids: list[str | None], device: torch.device):
        """Each row's adapter (None: the base model) for the forwards inside: set once, read by
        every layer."""
        self._row_slots = self._slots_of(adapter_ids, device)
        try:
            yield
        finally:
            self._row_slots = None

    def _slots_of(self, adapter_ids: list[str | None], device: torch.device) -> torch.Tensor | None:
        """The rows' slots, the same tensor while they stay the same; None where no row has an adapter."""
        slots = [BASE_SLOT if a is None else self.slots[a] for a in adapter_ids]
        if not any(slots):
            return None
        if self._last_slots is None or self._last_slots[0] != slots:
            self._last_slots = (slots, torch.tensor(slots, device=device))
            self._row_factors = {}  # gathered for other rows
        return self._last_slots[1]

    def _enable_peft_layers(self, enabled: bool) -> None:
        # Inside inference mode: enable_adapters() also flips requires_grad, which fails outside it
        # (on eviction) on the adapter weights that were loaded under it.
        with torch.inference_mode():
            for layer in self._layers:
                layer.enable_adapters(enabled)

    def _add_row_updates(self, layer: LoraLayer, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        row_slots = self._row_slots
        if row_slots is None or not self.engaged:
            return None  # base rows only, or PEFT's own adapters answer
        factors = self._row_factors.get(layer)
        if factors is None:
            factors = self._row_factors[layer] = self._layers[layer].for_rows(row_slots)
        a_rows, scaled_b_rows = factors
        x = args[0].to(a_rows.dtype)  # as PEFT casts the input to the adapter's dtype
        # [rows, tokens, in], whether the layer reads [rows, tokens, in] or, where the architecture
        # flattens its hidden states row by row, [rows * tokens, in].
        flat = x.reshape(a_rows.shape[0], -1, x.shape[-1])
        update = torch.bmm(torch.bmm(flat, a_rows), scaled_b_rows)  # [rows, tokens, out]
        return output + update.to(output.dtype).view(output.shape)


def _stack(layer: LoraLayer, adapter_ids: list[str]) -> _StackedLayer:
    present = [a for a in adapter_ids if a in layer.lora_A]
    for adapter_id in present:
        if adapter_id in layer.lora_variant or layer.lora_B[adapter_id].bias is not None:
            raise ValueError(
                f"gathered LoRA: adapter '{adapter_id}' is not plain LoRA (a variant or lora_bias)"
            )
        if not isinstance(layer.lora_A[adapter_id], nn.Linear):
            raise ValueError(
                f"gathered LoRA: adapter '{adapter_id}' wraps a {type(layer).__name__}, not a linear layer"
            )
    first = layer.lora_A[present[0]].weight
    rank = max(layer.lora_A[a].weight.shape[0] for a in present)
    slots = len(adapter_ids) + 1
    a = first.new_zeros(slots, rank, layer.in_features)
    b = first.new_zeros(slots, layer.out_features, rank)
    scaling = first.new_zeros(slots)
    for slot, adapter_id in enumerate(adapter_ids, start=BASE_SLOT + 1):
        if adapter_id not in layer.lora_A:
            continue  # not injected here (other target modules): no update, as in PEFT
        adapter_rank = layer.lora_A[adapter_id].weight.shape[0]
        a[slot, :adapter_rank] = layer.lora_A[adapter_id].weight
        b[slot, :, :adapter_rank] = layer.lora_B[adapter_id].weight
        scaling[slot] = layer.scaling[adapter_id]  # alpha / r, or alpha / sqrt(r) for rsLoRA
    return _StackedLayer(a, b, scaling)
