"""One base model in memory and the adapters on it: batched generation for any mix of adapters.

PEFT keeps several adapters of one type side by side in one PeftModel, and LoRA adapters (LoRA
and QLoRA winners) can even share a batch (`adapter_names`). Adapters of different types cannot
be injected into the same modules at once, so the engine keeps one type active: a batch is
grouped by type, and switching type unloads the injected layers (the base weights are never
touched or copied) and injects the other type's adapters from memory.

A fully fine-tuned winner has weights of its own: it is held as a separate model beside the base,
and its requests are a batch of their own.
"""

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import torch
from peft import PeftConfig, PeftModelForCausalLM, PeftType, set_peft_model_state_dict
from safetensors.torch import load_file

from trainables import loop, models

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
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


def read_adapter(adapter_id: str, directory: Path) -> LoadedAdapter:
    started = time.perf_counter()
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"adapter '{adapter_id}': no {ADAPTER_WEIGHTS} in {directory}")
    config = PeftConfig.from_pretrained(str(directory))
    config.inference_mode = True
    return LoadedAdapter(adapter_id, config, load_file(str(weights)), time.perf_counter() - started)


def _truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    cuts = [text.index(marker) for marker in stop if marker and marker in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class AdapterEngine:
    def __init__(self, base_model: str, quantize_4bit: bool):
        path = models.resolve(base_model)
        self.tokenizer = models.load_tokenizer(path)
        self.base = models.load_model(path, quantize_4bit=quantize_4bit).eval()
        self.device = self.base.device
        self.adapters: dict[str, LoadedAdapter] = {}
        self.models: dict[str, LoadedModel] = {}  # standalone models, by id
        self._peft: PeftModelForCausalLM | None = None
        self._active_type: PeftType | None = None
        self._injected: set[str] = set()
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
            if adapter_id in self._injected:
                if len(self._injected) == 1:
                    self._restore_base()
                else:
                    self._peft.delete_adapter(adapter_id)
                    self._injected.discard(adapter_id)

    def _restore_base(self) -> None:
        # Prompt tuning wraps the base without touching its modules; the other types inject layers.
        if self._peft is not None and not self._peft.active_peft_config.is_prompt_learning:
            self._peft.unload()  # removes the injected layers; base weights are untouched
        self._peft, self._active_type, self._injected = None, None, set()

    def _activate(self, adapter_ids: list[str]):
        """A model whose adapters include `adapter_ids`, all of one PEFT type."""
        peft_type = self.adapters[adapter_ids[0]].peft_type
        if self._active_type != peft_type:
            self._restore_base()
        for adapter_id in adapter_ids:
            if adapter_id in self._injected:
                continue
            adapter = self.adapters[adapter_id]
            if self._peft is None:
                self._peft = PeftModelForCausalLM(self.base, adapter.config, adapter_name=adapter_id)
            else:
                self._peft.add_adapter(adapter_id, adapter.config)
            set_peft_model_state_dict(self._peft, adapter.weights, adapter_name=adapter_id)
            self._injected.add(adapter_id)
            self._active_type = peft_type
        self._peft.eval()
        if peft_type != PeftType.LORA:
            self._peft.set_adapter(adapter_ids[0])
        return self._peft

    def _group_key(self, request: Request) -> tuple:
        """Requests that can share one generate call."""
        adapter = self.adapters.get(request.adapter) if request.adapter else None
        if request.adapter in self.models:
            kind = ("model", request.adapter)  # its own weights: a batch of its own
        elif adapter is None:
            kind = ("base",)
        elif adapter.peft_type == PeftType.LORA:
            kind = ("lora",)  # mixed LoRA adapters share a batch
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
        if adapter_ids and adapter_ids[0] in self.models:
            model = self.models[adapter_ids[0]].model
        elif not adapter_ids:
            model = self._peft if self._peft is not None else self.base
        else:
            model = self._activate(adapter_ids)
            if self._active_type == PeftType.LORA:
                kwargs["adapter_names"] = [r.adapter or BASE_ADAPTER for r in requests]
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
        # Base-model requests while adapters are injected run with the adapters switched off.
        switched_off = model.disable_adapter() if model is self._peft and not adapter_ids else nullcontext()
        with torch.inference_mode(), loop.autocast(self.device), switched_off:
            output = model.generate(
                **inputs,
                max_new_tokens=max(r.max_tokens for r in requests),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **kwargs,
            )
        generated = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [
            self._completion(r, row, n) for r, row, n in zip(requests, generated, prompt_tokens, strict=True)
        ]

    def _completion(self, request: Request, row: list[int], prompt_tokens: int) -> Completion:
        eos = self.tokenizer.eos_token_id
        row = row[: request.max_tokens]
        ended = eos in row
        tokens = row[: row.index(eos)] if ended else row
        text, stopped = _truncate_at_stop(
            self.tokenizer.decode(tokens, skip_special_tokens=True), request.stop
        )
        finish = "stop" if ended or stopped else "length"
        return Completion(text, prompt_tokens, len(tokens) + ended, finish)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])
