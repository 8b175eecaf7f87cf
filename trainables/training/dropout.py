"""Dropout whose CPU masks cost a quarter of the random numbers.

On the CPU, `nn.Dropout` draws one random number per element, and with LoRA on every linear layer
(seven dropouts per decoder layer, three of them over the same hidden states) that drawing was a
fifth of a training step on the embedded model, more than the adapters' matrix products. Here
each element's keep-or-drop comes from 16 random bits instead: one 64-bit draw serves four
elements. The drop probability is rounded to a multiple of 1/65536 (0.05 becomes 0.0500031), and
kept elements are scaled by 1 / (1 - p) as usual. On CUDA, PyTorch's fused dropout is already
cheap, so the class keeps nn.Dropout's own forward there.
"""

import torch

BITS = 16
LEVELS = 1 << BITS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """True where an element is kept, each with probability 1 - round(p * 65536) / 65536."""
    count = shape.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device)
    # Each int64 read as four int16 in [-32768, 32767]; the lowest round(p * 65536) values drop.
    halves = words.view(torch.int16)[:count].view(shape)
    return halves >= round(p * LEVELS) - LEVELS // 2


class CpuDropout(torch.nn.Dropout):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or hidden.device.type != "cpu":
            return super().forward(hidden)
        if self.p == 1:
            return torch.zeros_like(hidden)
        return (hidden * keep_mask(hidden.shape, self.p, hidden.device)).mul_(1 / (1 - self.p))


def use_cpu_dropout(model: torch.nn.Module) -> None:
    """Every nn.Dropout in the model becomes a CpuDropout with the same p (in place: no weights,
    buffers or saved files change)."""
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = CpuDropout
