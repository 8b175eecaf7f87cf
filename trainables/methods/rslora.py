"""rsLoRA: LoRA scaled by alpha / sqrt(rank) instead of alpha / rank, so that higher ranks still learn.

A method rather than a switch in LoRA's search: its effect depends on the rank it scales, and as a
method of its own it is opt-in, compared with LoRA in the per-method table and the verdicts, and
searched by TPE as a group of its own.
"""

import dataclasses
from functools import partial

from trainables.methods import lora
from trainables.methods.base import with_peft

METHOD = dataclasses.replace(
    lora.METHOD,
    name="rslora",
    wrap=with_peft(partial(lora.lora_config, use_rslora=True)),
    in_default_sweep=False,
)
