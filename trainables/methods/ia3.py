"""IA3: learnt scaling vectors on attention keys, values and the feed-forward layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.methods.base import ADAPTER_LEARNING_RATE, BuildContext, Hyperparameters, Method, with_peft

if TYPE_CHECKING:
    from peft import IA3Config


def _ia3(hyperparameters: Hyperparameters, context: BuildContext) -> IA3Config:
    # PEFT knows the attention and feed-forward modules of common architectures. IA3 has no
    # dropout, so the search varies only its learning rate.
    from peft import IA3Config, TaskType

    return IA3Config(task_type=TaskType.CAUSAL_LM)


METHOD = Method("ia3", with_peft(_ia3), dimensions=(ADAPTER_LEARNING_RATE,))
