"""The base model in memory and the adapters on it: iteration-level batching for any mix of adapters.

Each adapter runs on the base it was trained and scored on: QLoRA adapters on a 4-bit base, the
others on the full-precision one, so a replica holds one base of each precision its adapters need.
PEFT keeps several adapters of one type side by side in one PeftModel, and adapters on the same
base whose method allows it (LoRA's, not DoRA's) even share a batch, one adapter per row with the
base model's rows beside them: each row's update comes from the adapters' stacked factors
(serve.gathered_lora), not from PEFT's `adapter_names` loop. Adapters of different types cannot
be injected into the same modules at once, so each base keeps one type active, and switching type
unloads the injected layers (the base weights are never touched or copied) and injects the other
type's adapters from memory. A fully fine-tuned winner has weights of its own: it is held as a
separate model beside the base.

One thread decodes (trainables.decoding, as evaluation does): between two decoding steps, waiting
requests that can share the running batch join it and finished ones leave, so no request waits for
the longest one. What can share a batch is a *lane*: mixed-batch adapters of one type on one
base, with the base model's own requests; or one adapter of another method; or one standalone
model. While another lane's request waits, the running batch admits no one and drains, so every
request gets its turn.
"""

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig, PeftModelForCausalLM, PeftType, set_peft_model_state_dict
from safetensors.torch import load_file

from serve.adapters import ServingFacts
from serve.gathered_lora import GatheredLora
from trainables import models
from trainables.decoding import calls
from trainables.decoding.batch import Completion, Request, Row, RunningBatch, Sampling, prompt_token_ids
from trainables.decoding.lookup import DEFAULT_LOOKUP, Drafter, PromptLookup
from trainables.methods import is_prompt_learning

__all__ = ["AdapterEngine", "Completion", "LoadedAdapter", "LoadedModel", "Request", "Sampling", "Ticket"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoadedAdapter:
    """An adapter's config and weights in memory, read from safetensors only."""

    adapter_id: str
    config: PeftConfig
    weights: dict[str, torch.Tensor]
    serving: ServingFacts
    load_seconds: float

    @property
    def peft_type(self) -> PeftType:
        return self.config.peft_type

    @property
    def injection_kind(self) -> tuple:
        """Adapters of one kind can be injected into a base together."""
        shared = self.serving.served_together_when_equal
        return (self.peft_type, *(getattr(self.config, name) for name in shared))


@dataclass
class LoadedModel:
    """A whole fine-tuned model (full fine-tuning), served beside the base, read from safetensors only."""

    adapter_id: str
    model: torch.nn.Module
    load_seconds: float


def read_model(adapter_id: str, directory: Path) -> LoadedModel:
    started = time.perf_counter()
    model = models.load_model(str(directory), safetensors_only=True).eval()
    return LoadedModel(adapter_id, model, time.perf_counter() - started)


def read_adapter(adapter_id: str, directory: Path, serving: ServingFacts) -> LoadedAdapter:
    started = time.perf_counter()
    weights_file = directory / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"adapter '{adapter_id}': no {ADAPTER_WEIGHTS} in {directory}")
    config = PeftConfig.from_pretrained(str(directory))
    config.inference_mode = True
    weights = load_file(str(weights_file))
    seconds = time.perf_counter() - started
    return LoadedAdapter(adapter_id, config, weights, serving, seconds)


class _Base:
    """One base model and the adapters injected into it, all of one kind (PEFT type, and for VeRA
    rank and seed) at a time."""

    def __init__(self, load: Callable[[], torch.nn.Module], quantize_4bit: bool):
        self.load, self.quantize_4bit = load, quantize_4bit
        self.model = load().eval()
        self.peft: PeftModelForCausalLM | None = None
        self.active_kind: tuple | None = None  # LoadedAdapter.injection_kind of those injected
        self.injected: set[str] = set()
        self.mixing: set[str] = set()  # the injected adapters that share mixed batches
        self.gathered: GatheredLora | None = None  # their stacked factors, while mixing holds any

    def remove(self, adapter_id: str) -> None:
        if adapter_id not in self.injected:
            return
        if len(self.injected) == 1:
            self.restore()
        else:
            self.peft.delete_adapter(adapter_id)
            self.injected.discard(adapter_id)
            self.mixing.discard(adapter_id)
            if self.gathered is not None:
                self.gathered.sync(self.mixing)  # its stacked factors go too

    def restore(self) -> None:
        if self.gathered is not None:
            self.gathered.close()  # its hooks, on the layers about to go
            self.gathered = None
        if self.peft is not None and self.quantize_4bit:
            # Injecting LoRA layers into bitsandbytes 4-bit layers rewrites their quantization
            # statistics (absmax), so a 4-bit base that held adapters no longer answers as the one
            # the trial was scored on: load it afresh (rare: its last adapter was evicted).
            self.model = None
            self.model = self.load().eval()
        elif self.peft is not None and not is_prompt_learning(self.peft):
            # Prompt tuning wraps the base without touching its modules; the other types inject layers.
            self.peft.unload()  # removes the injected layers; base weights are untouched
        self.peft, self.active_kind, self.injected, self.mixing = None, None, set(), set()

    def activate(self, adapters: list[LoadedAdapter], mixed: bool) -> torch.nn.Module:
        """A model whose adapters include `adapters`, all of one injection kind.

        mixed: each row answers by its own adapter (serve.gathered_lora; the rows' adapters are
        set per forward by `rows`); otherwise the one adapter is made active.
        """
        kind = adapters[0].injection_kind
        if self.active_kind != kind:
            self.restore()
        for adapter in adapters:
            if adapter.adapter_id in self.injected:
                continue
            if self.peft is None:
                self.peft = PeftModelForCausalLM(self.model, adapter.config, adapter_name=adapter.adapter_id)
            else:
                self.peft.add_adapter(adapter.adapter_id, adapter.config)
            set_peft_model_state_dict(self.peft, adapter.weights, adapter_name=adapter.adapter_id)
            self.injected.add(adapter.adapter_id)
            if adapter.serving.shares_mixed_batch:
                self.mixing.add(adapter.adapter_id)
            self.active_kind = kind
        self.peft.eval()
        if mixed:
            return self._gather()
        if self.gathered is not None:
            self.gathered.disengage()
        self.peft.set_adapter(adapters[0].adapter_id)
        return self.peft

    def for_base_rows(self) -> torch.nn.Module:
        """The model that answers base-model rows: the bare base, or the gathered one (rows of
        adapters sharing mixed batches may run beside them).

        Adapters that cannot answer per row (another type, or DoRA alone) are unloaded first;
        the base's weights are the same either way, so rows already running are unaffected.
        """
        if self.peft is not None and not self.mixing:
            self.restore()
        return self.model if self.peft is None else self._gather()

    def lane_model(self) -> torch.nn.Module:
        """The model that the running lane's decoding steps call."""
        if self.peft is None:
            return self.model
        if self.gathered is not None and self.gathered.engaged:
            return self.peft.get_base_model()
        return self.peft

    def rows(self, adapter_ids: list[str | None]):
        """Around a forward: each row's adapter (None: the base) for the gathered layers."""
        if self.gathered is None or not self.gathered.engaged:
            return contextlib.nullcontext()
        return self.gathered.rows(adapter_ids, self.model.device)

    def _gather(self) -> torch.nn.Module:
        """The injected model with the mixing adapters' factors stacked and PEFT's own switched off:
        called directly, bypassing PeftModel's forward (its per-forward scan of every module)."""
        if self.gathered is None:
            self.gathered = GatheredLora(self.peft)
        self.gathered.sync(self.mixing)
        self.gathered.engage()
        return self.peft.get_base_model()


class Ticket(Future):
    """A request's Completion to come (None where its adapter is not, or no longer, added), and
    when its first token came: the prefill that made it (time.monotonic())."""

    first_token_at: float | None = None


@dataclass
class _Waiting:
    request: Request
    ticket: Ticket


class _RowGuardedBatch(RunningBatch):
    """A running batch in which a row's own failure (sampling its token, decoding its answer,
    matching its stop strings) finishes that row alone, its error kept in `failures` for the engine
    to hand to its request, instead of raising out of the step that every row shares."""

    def __init__(self, tokenizer, device: torch.device, drafter: Drafter | None):
        super().__init__(tokenizer, device, drafter)
        self.failures: dict[int, Exception] = {}  # id(row) -> its error, until the engine answers it

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        # Each sampling row's generator as it stands: should one row fail, the others choose again
        # one by one from where they stood, and draw what they draw alone.
        states = [None if row.generator is None else row.generator.get_state() for row in rows]
        try:
            return super()._choose(rows, logits)
        except Exception:
            pass
        chosen = []
        for index, (row, state) in enumerate(zip(rows, states, strict=True)):
            if state is not None:
                row.generator.set_state(state)
            own = logits[index : index + 1]
            try:
                chosen.append(super()._choose([row], own))
            except Exception as error:
                self.failures[id(row)] = error
                chosen.append(own.argmax(dim=-1))  # a stand-in: the row leaves at once (below)
        return torch.cat(chosen)

    def _completion_if_done(self, row: Row) -> Completion | None:
        if id(row) not in self.failures:
            try:
                return super()._completion_if_done(row)
            except Exception as error:
                self.failures[id(row)] = error
        return Completion("", row.prompt_tokens, len(row.tokens), "error")  # finished: the row leaves


class _PrefillFailed(Exception):
    """A prefill's forward pass failed: the running batch is untouched, so only its group fails."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _prefill(forward):
    """The prefill's forward, its failure told apart from what follows it in RunningBatch.join."""

    def guarded(**inputs) -> torch.Tensor:
        try:
            return forward(**inputs)
        except Exception as error:
            raise _PrefillFailed(error) from error

    return guarded


def _fail_each(tickets: list[Future], error: Exception) -> None:
    for ticket in tickets:
        if not ticket.done():
            ticket.set_exception(error)


PREFILL_PADDING = 0.1  # the padding a prefill group may add, as a share of its prompts' tokens

# A lane's key: ("base", 4-bit), ("mixed", 4-bit, injection kind), ("adapter", 4-bit, id) or
# ("model", id). Requests of equal keys share a batch, and base rows share a mixed lane on their base.
Lane = tuple


class AdapterEngine:
    def __init__(
        self,
        base_model: str,
        quantized_bases: tuple[bool, ...],
        max_batch_size: int = 16,
        batch_wait_s: float = 0.0,
        mix_adapters: bool = True,
        lookup: PromptLookup | None = DEFAULT_LOOKUP,
    ):
        """quantized_bases: for each base to hold, whether it is loaded in 4-bit (QLoRA's base).

        max_batch_size: rows decoded together. batch_wait_s: how long an idle engine waits for
        companions of a first request before it starts. mix_adapters: False batches each adapter's
        requests apart (the naive scheme, kept to measure what mixing gains). lookup: prompt
        lookup's settings for greedy requests, None: off (the answers are the same).
        """
        path = models.resolve(base_model)
        self.tokenizer = models.load_tokenizer(path)
        self.bases = {
            quantize_4bit: _Base(
                functools.partial(models.load_model, path, quantize_4bit=quantize_4bit), quantize_4bit
            )
            for quantize_4bit in quantized_bases
        }
        # `base` requests get the full-precision base, or the 4-bit one when it is the only one held.
        self.plain_base = self.bases[False] if False in self.bases else self.bases[True]
        self.device = self.plain_base.model.device
        self.max_batch_size, self.batch_wait_s, self.mix_adapters = max_batch_size, batch_wait_s, mix_adapters
        self.adapters: dict[str, LoadedAdapter] = {}
        self.models: dict[str, LoadedModel] = {}  # standalone models, by id
        self.steps = 0  # decoding steps taken, prefills included
        self._changed = threading.Condition()  # guards what follows; notified when work arrives
        self._waiting: list[_Waiting] = []
        self._retired: list[str] = []  # removed adapters whose injected layers are still to take out
        self._closed = False
        # One drafter for the engine's life: each adapter's answers help draft its later ones.
        self.drafter = calls.drafter(lookup, self.plain_base.model)
        self._batch = _RowGuardedBatch(self.tokenizer, self.device, self.drafter)
        self._lane: Lane | None = None
        self._standalone: torch.nn.Module | None = None  # the running lane's model, when it is one
        threading.Thread(target=self._decode_forever, name="decode", daemon=True).start()

    def add(self, adapter: LoadedAdapter | LoadedModel) -> None:
        with self._changed:
            held = self.models if isinstance(adapter, LoadedModel) else self.adapters
            held[adapter.adapter_id] = adapter

    def has(self, adapter_id: str) -> bool:
        return adapter_id in self.adapters or adapter_id in self.models

    def remove(self, adapter: LoadedAdapter | LoadedModel) -> None:
        """Drops this very load of an adapter (a later reload of the same id stays).

        Requests that wait for it get None; rows already decoding with it finish first, and only
        then are its layers taken out of the base.
        """
        adapter_id = adapter.adapter_id
        with self._changed:
            held = self.models if isinstance(adapter, LoadedModel) else self.adapters
            if held.get(adapter_id) is not adapter:
                return
            del held[adapter_id]
            if isinstance(adapter, LoadedAdapter):
                self._retired.append(adapter_id)
            self._changed.notify()

    def submit(self, request: Request) -> Ticket:
        """The request's ticket: cancelling it takes the request out, waiting or mid-decode."""
        ticket = Ticket()
        with self._changed:
            self._waiting.append(_Waiting(request, ticket))
            self._changed.notify()
        return ticket

    def generate(self, requests: list[Request]) -> list[Completion | None]:
        """Completions in request order; None where the adapter is not (or no longer) added."""
        tickets = [self.submit(request) for request in requests]
        return [ticket.result() for ticket in tickets]

    def load(self) -> tuple[int, int]:
        """Requests waiting to join the running batch, and rows in it."""
        with self._changed:
            return len(self._waiting), len(self._batch)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    # The decoding thread: everything below runs on it alone, so models and the batch need no lock.

    def _decode_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._waiting or len(self._batch))
                if self._closed:
                    return
                if not len(self._batch):
                    self._gather_companions()
                joining = self._admit()
                retired = self._take_retired()
            try:
                for adapter_id in retired:
                    self._uninject(adapter_id)
                with torch.inference_mode(), calls.autocast(self.device):
                    if joining:
                        self._join(joining)
                    if len(self._batch):
                        self._answer(self._batch.step(self._forward(step=True)))
            except Exception as error:
                # What no one request caused, and what may leave the batch half-changed, fails every
                # request in flight, and the engine carries on with an empty batch: a decoding step's
                # forward pass (every row's at once; the cache is updated layer by layer), loading
                # adapters into the base the running rows use, taking retired ones out. A row's own
                # failure (its token's sampling, its stop strings) finishes that row alone
                # (_RowGuardedBatch), as a newcomer's does (_admissible, _join).
                self._fail(
                    [waiting.ticket for waiting in joining] + [row.owner for row in self._batch.rows], error
                )

    def _gather_companions(self) -> None:
        """An idle engine waits a moment for more requests, so that they prefill together."""
        deadline = time.monotonic() + self.batch_wait_s
        while len(self._waiting) < self.max_batch_size and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    def _admit(self) -> list[_Waiting]:
        """The waiting requests that join the running batch now, in arrival order.

        A new lane takes every waiting request it can share (the oldest request's lane). A running
        lane takes newcomers only while nobody waits for another lane: then it drains.
        """
        for waiting in [w for w in self._waiting if w.ticket.cancelled() or not self._present(w.request)]:
            self._waiting.remove(waiting)
            if not waiting.ticket.cancelled():
                waiting.ticket.set_result(None)
        running = len(self._batch) > 0
        lane = self._lane if running else None
        joinable = []
        for waiting in self._waiting:
            key = self._lane_of(waiting.request)
            widened = key if lane is None else self._shared(lane, key)
            if widened is None:
                if running:
                    return []  # another lane waits: drain
                continue
            lane = widened
            joinable.append(waiting)
        joining = joinable[: self.max_batch_size - len(self._batch)]
        for waiting in joining:
            self._waiting.remove(waiting)
        if joining:
            self._lane = lane
        return joining

    def _present(self, request: Request) -> bool:
        return request.adapter is None or self.has(request.adapter)

    def _lane_of(self, request: Request) -> Lane:
        """Which requests can share a batch with this one."""
        if request.adapter in self.models:
            return ("model", request.adapter)  # its own weights
        if request.adapter is None:
            return ("base", self.plain_base.quantize_4bit)
        adapter = self.adapters[request.adapter]
        if adapter.serving.shares_mixed_batch and self.mix_adapters:
            return ("mixed", adapter.serving.quantize_4bit, adapter.injection_kind)  # injected together
        return ("adapter", adapter.serving.quantize_4bit, adapter.adapter_id)

    def _shared(self, lane: Lane, key: Lane) -> Lane | None:
        """The lane once a request of `key` joins it, or None where it cannot."""
        if key == lane:
            return lane
        kinds = {lane[0], key[0]}
        if self.mix_adapters and kinds == {"base", "mixed"} and lane[1] == key[1]:  # on the same base
            return lane if lane[0] == "mixed" else key
        return None

    def _take_retired(self) -> list[str]:
        """Removed adapters that no running row uses any more (and were not added again)."""
        in_use = {row.request.adapter for row in self._batch.rows}
        done = [a for a in self._retired if a not in in_use]
        self._retired = [a for a in self._retired if a in in_use]
        return done

    def _uninject(self, adapter_id: str) -> None:
        for base in self.bases.values():
            base.remove(adapter_id)

    def _join(self, joining: list[_Waiting]) -> None:
        joining = self._admissible(joining)
        if not joining:
            return
        model = self._prepare([waiting.request for waiting in joining])
        # Until a group's prefill has run, the running batch is untouched: what fails before then
        # (tokenizing, the prefill's forward pass) fails that group's requests alone.
        try:
            groups = self._similar_lengths(joining)
        except Exception as error:
            _fail_each([each.ticket for each in joining], error)
            return
        for group in groups:
            try:
                rows, forward, prompt, prompt_ids = self._prefill_inputs(model, group)
            except Exception as error:
                _fail_each([each.ticket for each in group], error)
                continue
            try:
                finished = self._batch.join(rows, _prefill(forward), prompt, prompt_ids)
            except _PrefillFailed as failed:  # anything later in join: the batch may be half-changed
                _fail_each([each.ticket for each in group], failed.error)
                continue
            prefilled = time.monotonic()
            for each in group:
                each.ticket.first_token_at = prefilled
            self._answer(finished)

    def _prefill_inputs(
        self, model: torch.nn.Module, group: list[_Waiting]
    ) -> tuple[list[Row], Callable, dict, list[list[int]]]:
        """A prefill group's rows, the forward that prefills them, its inputs and the prompts' tokens."""
        inputs = self._batch.prompts([waiting.request for waiting in group])
        prompt_ids = prompt_token_ids(inputs)
        rows = [Row(w.request, len(ids), owner=w.ticket) for w, ids in zip(group, prompt_ids, strict=True)]
        call = calls.generation_call(model, inputs)  # prompt tuning's virtual tokens, put in once
        prompt = {
            name: call.inputs[name]
            for name in ("input_ids", "inputs_embeds", "attention_mask")
            if name in call.inputs
        }
        return rows, self._forward(step=False, newcomers=rows, model=call.model), prompt, prompt_ids

    def _admissible(self, joining: list[_Waiting]) -> list[_Waiting]:
        """The newcomers whose own row can be made (its text valid Unicode, its sampler seeded);
        each other one fails alone, with its own error, so that one bad request never fails the
        batch. A UTF-8 check, not an encoding: the prompts are tokenized once, in their groups."""
        admitted = []
        for waiting in joining:
            try:
                waiting.request.prompt.encode("utf-8")
                Row(waiting.request, 0)
            except Exception as error:  # the request's own problem: handed to it alone
                waiting.ticket.set_exception(error)
                continue
            admitted.append(waiting)
        return admitted

    def _similar_lengths(self, joining: list[_Waiting]) -> list[list[_Waiting]]:
        """The newcomers in prefill groups whose padding adds at most PREFILL_PADDING to their tokens.

        Prefilling prompts of unequal lengths together computes every padding position too; with
        the prompts of a real workload that waste outweighs what one larger forward saves.
        """
        lengths = [len(ids) for ids in self.tokenizer([w.request.prompt for w in joining])["input_ids"]]
        groups, tokens = [], 0
        for index in sorted(range(len(joining)), key=lengths.__getitem__):
            if groups and (len(groups[-1]) + 1) * lengths[index] <= (1 + PREFILL_PADDING) * (
                tokens + lengths[index]
            ):
                groups[-1].append(joining[index])
                tokens += lengths[index]
            else:
                groups.append([joining[index]])
                tokens = lengths[index]
        return groups

    def _prepare(self, requests: list[Request]) -> torch.nn.Module:
        """Loads what the lane's new requests need into their base; the model that prefills them."""
        kind = self._lane[0]
        if kind == "model":
            self._standalone = self.models[requests[0].adapter].model
            return self._standalone
        base = self.bases[self._lane[1]]
        adapters = [self.adapters[a] for a in dict.fromkeys(r.adapter for r in requests if r.adapter)]
        if adapters:
            return base.activate(adapters, mixed=kind == "mixed")
        return base.for_base_rows()

    def _forward(self, step: bool, newcomers: list[Row] | None = None, model=None):
        """The forward of a prefill (newcomers, on `model`) or of a step (every row, on the lane's model)."""
        rows = self._batch.rows if step else newcomers
        kind = self._lane[0]
        rows_context = contextlib.nullcontext
        if kind == "model":
            model = self._standalone
        else:
            base = self.bases[self._lane[1]]
            if step:
                model = base.lane_model()
                if is_prompt_learning(model):
                    model = model.get_base_model()  # its virtual tokens went in at the prefill
            if kind in ("base", "mixed"):
                rows_context = functools.partial(base.rows, [row.request.adapter for row in rows])

        def forward(**inputs) -> torch.Tensor:
            with rows_context():
                return model(**inputs, use_cache=True).logits

        self.steps += 1
        return forward

    def _answer(self, finished: list[Row]) -> None:
        cancelled = [row for row in self._batch.rows if row.owner.cancelled()]
        self._batch.drop(cancelled)
        for row in finished:
            error = self._batch.failures.pop(id(row), None)
            if row.owner.cancelled():
                continue
            if error is None:
                row.owner.set_result(row.completion)
            else:
                row.owner.set_exception(error)

    def _fail(self, tickets: list[Future], error: Exception) -> None:
        self._batch = _RowGuardedBatch(self.tokenizer, self.device, self.drafter)
        _fail_each(tickets, error)
