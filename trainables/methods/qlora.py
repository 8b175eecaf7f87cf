"""QLoRA: LoRA on a 4-bit NF4 base (double quantization), served on that same 4-bit base."""

import dataclasses

from trainables.methods import lora

METHOD = dataclasses.replace(lora.METHOD, name="qlora", quantize_4bit=True)
