"""The embedded default base model: a small Llama-architecture LM the project builds itself.

No hub is reachable on a fresh machine, so `--model embedded` (the default) trains its own BPE
tokenizer and pretrains a few-million-parameter Llama on the *train* splits of the shipped tasks,
as plain shuffled sentences (no prompt format, so fine-tuning has something left to teach).
The build is deterministic for a seed and cached under a version key in the user's cache.
"""

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainables.tasks.data import read_jsonl

BUILDER_VERSION = 1
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
NOT_PRETRAINED_ON = {"id", "topic"}


@dataclass(frozen=True)
class EmbeddedSpec:
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 704  # multiples of 64: bitsandbytes packs 4-bit CPU weights in blocks of 64
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 1024
    block_size: int = 128
    batch_size: int = 16
    steps: int = 400
    learning_rate: float = 3e-3
    seed: int = 0


DEFAULT_SPEC = EmbeddedSpec()
# Random weights in seconds, for tests: never the cached default.
TINY_SPEC = EmbeddedSpec(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, steps=0
)


def cache_root() -> Path:
    base = (
        os.environ.get("PEFT_SWEEPS_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft-sweeps"
    )
    return Path(base)


def _train_files() -> list[Path]:
    from trainables.tasks import TASKS

    return [task.train_file for task in TASKS.values()]


def pretraining_sentences() -> list[str]:
    """Every text value of every train split; test splits are never read."""
    sentences = []
    for path in _train_files():
        for row in read_jsonl(path, validate_row=lambda row: None):
            for key, value in row.items():
                if key in NOT_PRETRAINED_ON:
                    continue
                values = value if isinstance(value, list) else [value]
                sentences.extend(str(v) for v in values if isinstance(v, str | int | float))
    return sentences


def version_key(spec: EmbeddedSpec) -> str:
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    digest.update(str(BUILDER_VERSION).encode())
    for path in _train_files():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def train_tokenizer(sentences: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_tokenizer(spec: EmbeddedSpec) -> PreTrainedTokenizerFast:
    """The tokenizer the build of spec makes (deterministic; seconds, no model training)."""
    return train_tokenizer(pretraining_sentences(), spec.vocab_size)


def _model_config(spec: EmbeddedSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _token_blocks(
    sentences: list[str], tokenizer: PreTrainedTokenizerFast, spec: EmbeddedSpec
) -> torch.Tensor:
    """The shuffled sentences as one token stream cut into fixed-length blocks."""
    random.Random(spec.seed).shuffle(sentences)
    stream: list[int] = []
    for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]:
        stream.extend([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])
    usable = len(stream) // spec.block_size * spec.block_size
    return torch.tensor(stream[:usable]).view(-1, spec.block_size)


def _pretrain(model: LlamaForCausalLM, blocks: torch.Tensor, spec: EmbeddedSpec) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.steps, pct_start=0.05
    )
    order = torch.Generator().manual_seed(spec.seed)
    model.train()
    progress = tqdm(range(spec.steps), desc="pretraining the embedded model", unit="step")
    for _ in progress:
        batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=order)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def build(spec: EmbeddedSpec, out_dir: Path) -> Path:
    """Build tokenizer + model into out_dir (deterministic for spec.seed)."""
    torch.manual_seed(spec.seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        sentences = pretraining_sentences()
        tokenizer = train_tokenizer(sentences, spec.vocab_size)
        model = LlamaForCausalLM(_model_config(spec, tokenizer))
        if spec.steps:
            _pretrain(model, _token_blocks(sentences, tokenizer, spec), spec)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "embedded_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out_dir


def ensure_built(spec: EmbeddedSpec = DEFAULT_SPEC) -> Path:
    """The cached model directory for spec, built first if absent (atomically, so a crash leaves none)."""
    target = cache_root() / "models" / f"embedded-{version_key(spec)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(spec, staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent builder that won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_spec(**overrides) -> EmbeddedSpec:
    return replace(TINY_SPEC, **overrides)
