"""DoRA: LoRA with each weight split into a magnitude and a direction, the update applied to the direction.

PEFT refuses DoRA adapters in mixed-adapter batches, so each serves a batch of its own. Its
magnitude vectors rescale the whole weight, so it exports merged only, not as a plain LoRA.
"""

import dataclasses
from functools import partial

from trainables.methods import lora
from trainables.methods.base import with_peft

METHOD = dataclasses.replace(
    lora.METHOD,
    name="dora",
    wrap=with_peft(partial(lora.lora_config, use_dora=True)),
    shares_mixed_batch=False,
    lora_factors=None,
    in_default_sweep=False,
)
