"""The explicit training loop shared by every method.

Batches group examples of similar length (dynamic padding, little compute spent on pad tokens,
no attention across examples). The micro-batch order is a pure function of (seed, epoch), so a
resumed run skips to the exact batch it stopped at.
"""

import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import get_linear_schedule_with_warmup
from transformers.integrations.neftune import activate_neftune, deactivate_neftune

from trainables.config import TrialConfig
from trainables.decoding import calls
from trainables.encoding import collate, target_logits_only
from trainables.methods import METHODS, Method
from trainables.training.dropout import use_cpu_dropout

GROUPS_PER_MEGABATCH = 16


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the trial ends with this reason."""


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    # Each step's loss since the last evaluation, left on the device: reading a loss back to the
    # host waits for the device to finish, so that happens once per evaluation, not per step.
    losses: list[torch.Tensor] = field(default_factory=list)
    last_train_loss: float = math.nan

    def window_loss(self) -> float:
        """Mean training loss since the last evaluation (the previous one's, if none since)."""
        if self.losses:
            self.last_train_loss = torch.stack(self.losses).mean().item()
        return self.last_train_loss

    def check_finite(self) -> None:
        """Raises NonFiniteLoss naming the first step since the last evaluation whose loss was not finite."""
        if not self.losses:
            return
        finite = torch.isfinite(torch.stack(self.losses)).tolist()
        if False in finite:
            first = finite.index(False)
            value = self.losses[first].item()
            raise NonFiniteLoss(f"training loss became {value} at step {self.step - len(finite) + first + 1}")


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches whose members have similar lengths (HF's LengthGroupedSampler idea)."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    megabatch = batch_size * GROUPS_PER_MEGABATCH
    batches = []
    for start in range(0, len(order), megabatch):
        group = sorted(order[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def micro_batches(lengths: list[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    for epoch in itertools.count():
        yield from length_grouped_batches(lengths, batch_size, seed, epoch)


def make_optimizer(model, config: TrialConfig, total_steps: int):
    method = METHODS[config.method]
    optimizer = method.optimizer(model, config.hyperparameters, config.learning_rate, config.weight_decay)
    warmup = math.floor(config.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


@contextmanager
def noisy_embeddings(model, alpha: float):
    """NEFTune's noise on the input embeddings within the block, in training mode only (the
    hook reads the embedding module's mode, so evaluation inside the block sees clean ones); 0: none."""
    if not alpha:
        yield
        return
    hook = activate_neftune(model, alpha)
    try:
        yield
    finally:
        deactivate_neftune(model, hook)


def train(
    model,
    features: list[dict],
    config: TrialConfig,
    method: Method,
    total_steps: int,
    optimizer,
    scheduler,
    state: TrainState,
    pad_id: int,
    on_eval: Callable[[TrainState], None],
) -> TrainState:
    """Run optimizer steps from state.step to total_steps, calling on_eval every eval_every steps."""
    device = calls.model_device(model)
    lengths = [len(f["input_ids"]) for f in features]
    stream = itertools.islice(
        micro_batches(lengths, config.batch_size, config.seed), state.step * config.grad_accum, None
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_cpu_dropout(model)
    model.train()
    with noisy_embeddings(model, config.neftune_alpha):
        while state.step < total_steps:
            started = time.perf_counter()
            step_loss = torch.zeros((), device=device)
            for _ in range(config.grad_accum):
                rows = next(stream)
                chosen = [features[i] for i in rows]
                batch = target_logits_only(model, chosen, collate(chosen, pad_id, device))
                with calls.autocast(device):
                    loss = model(**batch).loss
                (loss / config.grad_accum).backward()
                step_loss += loss.detach().float() / config.grad_accum
                state.tokens += sum(lengths[i] for i in rows)
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if method.after_optimizer_step is not None:
                method.after_optimizer_step(model, state.step)
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.losses.append(step_loss)
            evaluating = state.step % config.eval_every == 0 or state.step == total_steps
            if evaluating and device.type == "cuda":
                torch.cuda.synchronize(device)  # the window's queued work is training time, not evaluation's
            state.seconds += time.perf_counter() - started
            if evaluating:
                state.check_finite()
                on_eval(state)
                state.losses.clear()
                model.train()
    return state
