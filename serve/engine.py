"""The base model in memory and the adapters on it: batched generation for any mix of adapters.

Each adapter runs on the base it was trained and scored on: QLoRA adapters on a 4-bit base, the
others on the full-precision one, so a replica holds one base of each precision its adapters need.
PEFT keeps several adapters of one type side by side in one PeftModel, and adapters on the same
base whose method allows it (LoRA's, not DoRA's) even share a batch (`adapter_names`). Adapters of
different types cannot be injected into the same modules at once, so each base keeps one type
active: a batch is grouped by base and type, and switching type unloads the injected layers (the
base weights are never touched or copied) and injects the other type's adapters from memory.

A fully fine-tuned winner has weights of its own: it is held as a separate model beside the base,
and its requests are a batch of their own.
"""

import functools
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import torch
from peft import PeftConfig, PeftModelForCausalLM, PeftType, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import StoppingCriteria, StoppingCriteriaList

from trainables import loop, models

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Request:
    prompt: str
    adapter: str | None  # None: the base model
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass
class LoadedAdapter:
    """An adapter's config and weights in memory, read from safetensors only."""

    adapter_id: str
    config: PeftConfig
    weights: dict[str, torch.Tensor]
    quantize_4bit: bool  # trained on the 4-bit base (QLoRA), so served on it
    shares_mixed_batch: bool  # its method lets it answer in a batch mixed with other such adapters
    load_seconds: float

    @property
    def peft_type(self) -> PeftType:
        return self.config.peft_type


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


def read_adapter(
    adapter_id: str, directory: Path, quantize_4bit: bool, shares_mixed_batch: bool
) -> LoadedAdapter:
    started = time.perf_counter()
    weights_file = directory / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"adapter '{adapter_id}': no {ADAPTER_WEIGHTS} in {directory}")
    config = PeftConfig.from_pretrained(str(directory))
    config.inference_mode = True
    weights = load_file(str(weights_file))
    return LoadedAdapter(
        adapter_id, config, weights, quantize_4bit, shares_mixed_batch, time.perf_counter() - started
    )


def _truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    cuts = [text.index(marker) for marker in stop if marker and marker in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class _RowEnds(StoppingCriteria):
    """Ends each row of a batch where its own request ends: at its max_tokens or at a stop string.

    Without it, every row runs to the batch's longest max_tokens and a stop string is only cut
    off afterwards, so the tokens past the stop cost time and were counted.
    """

    def __init__(self, requests: list[Request], prompt_width: int, tokenizer):
        self.requests, self.prompt_width, self.tokenizer = requests, prompt_width, tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_width :]
        ended = [
            generated.shape[1] >= request.max_tokens or (bool(request.stop) and self._has_stop(row, request))
            for request, row in zip(self.requests, generated.tolist(), strict=True)
        ]
        return torch.tensor(ended, device=input_ids.device)

    def _has_stop(self, row: list[int], request: Request) -> bool:
        # On the decoded text, as the answer is cut: a stop string may span or split tokens.
        return _truncate_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), request.stop)[1]


class _Base:
    """One base model and the adapters injected into it, all of one PEFT type at a time."""

    def __init__(self, load: Callable[[], torch.nn.Module], quantize_4bit: bool):
        self.load, self.quantize_4bit = load, quantize_4bit
        self.model = load().eval()
        self.peft: PeftModelForCausalLM | None = None
        self.active_type: PeftType | None = None
        self.injected: set[str] = set()

    def remove(self, adapter_id: str) -> None:
        if adapter_id not in self.injected:
            return
        if len(self.injected) == 1:
            self.restore()
        else:
            self.peft.delete_adapter(adapter_id)
            self.injected.discard(adapter_id)

    def restore(self) -> None:
        if self.peft is not None and self.quantize_4bit:
            # Injecting LoRA layers into bitsandbytes 4-bit layers rewrites their quantization
            # statistics (absmax), so a 4-bit base that held adapters no longer answers as the one
            # the trial was scored on: load it afresh (rare: its last adapter was evicted).
            self.model = None
            self.model = self.load().eval()
        elif self.peft is not None and not self.peft.active_peft_config.is_prompt_learning:
            # Prompt tuning wraps the base without touching its modules; the other types inject layers.
            self.peft.unload()  # removes the injected layers; base weights are untouched
        self.peft, self.active_type, self.injected = None, None, set()

    def activate(self, adapters: list[LoadedAdapter]) -> PeftModelForCausalLM:
        """A model whose adapters include `adapters`, all of one PEFT type."""
        peft_type = adapters[0].peft_type
        if self.active_type != peft_type:
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
            self.active_type = peft_type
        self.peft.eval()
        if not adapters[0].shares_mixed_batch:  # a batch of its own: the one active adapter
            self.peft.set_adapter(adapters[0].adapter_id)
        return self.peft


class AdapterEngine:
    def __init__(self, base_model: str, quantized_bases: tuple[bool, ...]):
        """quantized_bases: for each base to hold, whether it is loaded in 4-bit (QLoRA's base)."""
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
        self.adapters: dict[str, LoadedAdapter] = {}
        self.models: dict[str, LoadedModel] = {}  # standalone models, by id
        self._lock = threading.Lock()  # one generate at a time: the injected layers are shared state

    def add(self, adapter: LoadedAdapter | LoadedModel) -> None:
        with self._lock:
            held = self.models if isinstance(adapter, LoadedModel) else self.adapters
            held[adapter.adapter_id] = adapter

    def has(self, adapter_id: str) -> bool:
        return adapter_id in self.adapters or adapter_id in self.models

    def remove(self, adapter: LoadedAdapter | LoadedModel) -> None:
        """Drops this very load of an adapter (a later reload of the same id stays)."""
        adapter_id = adapter.adapter_id
        with self._lock:
            if isinstance(adapter, LoadedModel):
                if self.models.get(adapter_id) is adapter:
                    del self.models[adapter_id]
                return
            if self.adapters.get(adapter_id) is not adapter:
                return
            del self.adapters[adapter_id]
            self.bases[adapter.quantize_4bit].remove(adapter_id)

    def _group_key(self, request: Request) -> tuple:
        """Requests that can share one generate call."""
        adapter = self.adapters.get(request.adapter) if request.adapter else None
        if request.adapter in self.models:
            kind = ("model", request.adapter)  # its own weights: a batch of its own
        elif adapter is None:
            kind = ("base",)
        elif adapter.shares_mixed_batch:
            kind = ("mixed", adapter.peft_type.value, adapter.quantize_4bit)  # one batch on one base
        else:
            kind = (adapter.peft_type.value, adapter.adapter_id)
        return (*kind, request.sampling)

    def generate(self, requests: list[Request]) -> list[Completion | None]:
        """Completions in request order; None where the adapter is not (or no longer) added."""
        results: list[Completion | None] = [None] * len(requests)
        with self._lock:
            ready = [i for i, r in enumerate(requests) if r.adapter is None or self.has(r.adapter)]
            order = sorted(ready, key=lambda i: repr(self._group_key(requests[i])))
            for _, members in groupby(order, key=lambda i: repr(self._group_key(requests[i]))):
                indices = list(members)
                for index, completion in zip(
                    indices, self._generate_group([requests[i] for i in indices]), strict=True
                ):
                    results[index] = completion
        return results

    def _generate_group(self, requests: list[Request]) -> list[Completion]:
        adapter_ids = sorted({r.adapter for r in requests if r.adapter})
        kwargs = {}
        switched_off = nullcontext()
        if adapter_ids and adapter_ids[0] in self.models:
            model = self.models[adapter_ids[0]].model
        elif not adapter_ids:
            model = self.plain_base.model
            if self.plain_base.peft is not None:
                # Base-model requests while adapters are injected run with the adapters switched off.
                model = self.plain_base.peft
                switched_off = model.disable_adapter()
        else:
            adapters = [self.adapters[adapter_id] for adapter_id in adapter_ids]
            base = self.bases[adapters[0].quantize_4bit]
            model = base.activate(adapters)
            if adapters[0].shares_mixed_batch:
                kwargs["adapter_names"] = [r.adapter for r in requests]
        sampling = requests[0].sampling
        if sampling.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            kwargs["do_sample"] = False
        inputs = self.tokenizer(
            [r.prompt for r in requests], return_tensors="pt", padding=True, padding_side="left"
        ).to(self.device)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        with torch.inference_mode(), loop.autocast(self.device), switched_off:
            call = loop.generation_call(model, inputs)  # prompt tuning's virtual tokens, put in once
            output = call.model.generate(
                **call.inputs,
                max_new_tokens=max(r.max_tokens for r in requests),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList(
                    [_RowEnds(requests, call.prompt_width, self.tokenizer)]
                ),
                **kwargs,
            )
        generated = output[:, call.prompt_width :].tolist()
        return [
            self._completion(r, row, n) for r, row, n in zip(requests, generated, prompt_tokens, strict=True)
        ]

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _completion(self, request: Request, row: list[int], prompt_tokens: int) -> Completion:
        eos = self.tokenizer.eos_token_id
        row = row[: request.max_tokens]  # a row that ended first is padded to the batch's width
        ended = eos in row
        tokens = row[: row.index(eos)] if ended else row
        text, stopped = _truncate_at_stop(self._decode(tokens), request.stop)
        if stopped:
            return Completion(text, prompt_tokens, self._tokens_behind(tokens, text), "stop")
        return Completion(text, prompt_tokens, len(tokens) + ended, "stop" if ended else "length")

    def _tokens_behind(self, tokens: list[int], text: str) -> int:
        """How many leading tokens produced `text` (a stop string may begin inside the last one)."""
        return next(n for n in range(len(tokens) + 1) if len(self._decode(tokens[:n])) >= len(text))
