"""The embedded default base model: a small Llama-architecture LM the project builds itself.

No hub is reachable on a fresh machine, so `--model embedded` (the default) trains its own BPE
tokenizer and pretrains a few-million-parameter Llama on the *train* splits of the shipped tasks
(never validation or test): each train row as one document, and copies of those documents with
invented names, which teach the model to look back and copy (names.py), as the tasks ask: carry
the conversation's entity into the query, the document's values into the JSON, the paragraph's
span into the answer. Its tokenizer gives every digit a token of its own, so that a date or number
is the same tokens wherever it stands and copies verbatim. The heads that copy are set by hand
before pretraining (copying_circuit.py), matching two tokens: learned from scratch they form late.
The package ships the weights, pretrained once on a GPU; a build of other data or another spec is
deterministic for a seed on CPU and cached under a version key in the user's cache. What each
choice was measured to do is in docs/embedded-model.md.

Finding the model (`ensure_built` when the shipped weights are current) imports no model class:
the sweep's driver does it before any trial starts. A build imports the Llama classes when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from trainables.embedded import copying_circuit
from trainables.embedded.names import pretraining_documents, row_documents

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

BUILDER_VERSION = 2
SPEC_FILE = "embedded_spec.json"
VERSION_FILE = "version_key.txt"
# DEFAULT_SPEC pretrained once on a GPU with
# `python -m trainables.embedded trainables/embedded/weights --device cuda`: on 2 CPU cores it
# would take far longer than a first run can wait, so the weights ship (docs/embedded-model.md).
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class EmbeddedSpec:
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 704  # multiples of 64: bitsandbytes packs 4-bit CPU weights in blocks of 64
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 1024
    block_size: int = 512  # holds a whole NER document (lengths in docs/embedded-model.md)
    batch_size: int = 8
    steps: int = 1600
    learning_rate: float = 2e-3
    renamed_copies: int = 4
    # Start with the heads that copy from context in place (copying_circuit.py).
    copying_circuit: bool = False
    # How many tokens the circuit's induction heads match: the current one, or it and the one before.
    copying_match_tokens: int = 1
    # Every digit its own token, as Llama's tokenizer does: a number then tokenizes the same after
    # a space or a quote, so a date or document number can be copied from the text to the JSON.
    individual_digits: bool = False
    # How renamed copies invent their names (names.NameInventor.STYLES).
    invented_names: str = "syllables"
    seed: int = 0


# The copying heads set by hand, matching two tokens, then many renamed copies with spliced names
# for many steps: docs/embedded-model.md and docs/history.md compare the choices tried.
DEFAULT_SPEC = EmbeddedSpec(
    batch_size=64,
    steps=8400,
    renamed_copies=100,
    copying_circuit=True,
    copying_match_tokens=2,
    individual_digits=True,
    invented_names="spliced",
)
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


def version_key(spec: EmbeddedSpec) -> str:
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    digest.update(str(BUILDER_VERSION).encode())
    for path in _train_files():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def train_tokenizer(
    texts: list[str], vocab_size: int, individual_digits: bool = False
) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if individual_digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_tokenizer(spec: EmbeddedSpec) -> PreTrainedTokenizerFast:
    """The tokenizer the build of spec makes (deterministic; seconds, no model training)."""
    return train_tokenizer(row_documents(), spec.vocab_size, spec.individual_digits)


def _model_config(spec: EmbeddedSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    from transformers import LlamaConfig

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
    documents: list[str], tokenizer: PreTrainedTokenizerFast, spec: EmbeddedSpec
) -> torch.Tensor:
    """The shuffled documents as one token stream cut into fixed-length blocks."""
    random.Random(spec.seed).shuffle(documents)
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])
    usable = len(stream) // spec.block_size * spec.block_size
    return torch.tensor(stream[:usable]).view(-1, spec.block_size)


def _save(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: EmbeddedSpec, out_dir: Path
) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))
    (out_dir / VERSION_FILE).write_text(version_key(spec) + "\n")


def _pretrain(
    model: LlamaForCausalLM,
    blocks: torch.Tensor,
    spec: EmbeddedSpec,
    snapshot: Callable[[int], None],
    kept: dict[torch.nn.Parameter, list[copying_circuit.Region]],
    device: torch.device,
) -> None:
    on_cuda = device.type == "cuda"
    model.to(device)  # moves the parameters' data in place: `kept` still names them
    blocks = blocks.to(device)
    hooks = copying_circuit.keep_while_training(kept)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01, fused=on_cuda)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.steps, pct_start=0.05
    )
    order = torch.Generator().manual_seed(spec.seed)
    # fp32 weights either way; on CUDA the matrix products run in bf16, as training there does.
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    model.train()
    progress = tqdm(range(1, spec.steps + 1), desc="pretraining the embedded model", unit="step")
    for step in progress:
        batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=order).to(device)]
        with precision:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if not on_cuda or step % 50 == 0:  # reading the loss waits for the GPU
            progress.set_postfix(loss=f"{loss.item():.3f}")
        snapshot(step)
    copying_circuit.remove(hooks)
    model.to("cpu").eval()


def build(spec: EmbeddedSpec, out_dir: Path, snapshot_every: int | None = None, device: str = "cpu") -> Path:
    """Build tokenizer + model into out_dir: bit for bit the same for spec.seed on CPU; on CUDA
    (`device="cuda"`, for long pretraining) the same recipe, but not bit for bit.

    snapshot_every: also save the model every that many steps under out_dir/snapshots/step-N,
    to measure the learning curve of a pretraining choice.
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(spec.seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    # CUDA's fast kernels (SDPA's backward, the embedding's gradient) are not deterministic.
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    try:
        tokenizer = build_tokenizer(spec)
        model = LlamaForCausalLM(_model_config(spec, tokenizer))
        kept = (
            copying_circuit.install(model, spec.seed, spec.copying_match_tokens)
            if spec.copying_circuit
            else {}
        )

        def snapshot(step: int) -> None:
            if snapshot_every and step % snapshot_every == 0 and step < spec.steps:
                _save(model, tokenizer, spec, out_dir / "snapshots" / f"step-{step}")

        if spec.steps:
            blocks = _token_blocks(pretraining_documents(spec), tokenizer, spec)
            _pretrain(model, blocks, spec, snapshot, kept, torch.device(device))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    _save(model, tokenizer, spec, out_dir)
    return out_dir


def shipped_version() -> str | None:
    """The version key of the weights shipped in the package, if any."""
    stamp = SHIPPED_DIR / VERSION_FILE
    return stamp.read_text().strip() if stamp.is_file() else None


def ensure_built(spec: EmbeddedSpec = DEFAULT_SPEC) -> Path:
    """The model directory for spec: the shipped weights when they are spec's build of today's data,
    else the cached build, built first if absent (atomically, so a crash leaves none).
    """
    key = version_key(spec)
    if shipped_version() == key:
        return SHIPPED_DIR
    target = cache_root() / "models" / f"embedded-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(spec, staging, device="cuda" if torch.cuda.is_available() else "cpu")
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent builder that won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_spec(**overrides) -> EmbeddedSpec:
    return replace(TINY_SPEC, **overrides)


# The spec's fields the command line can change, for experiments and the bit-for-bit test.
CLI_SPEC_FIELDS = {
    "steps": "pretraining steps",
    "batch_size": "blocks of 512 tokens a step",
    "renamed_copies": "copies of each train row with invented names",
}


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(
        prog="python -m trainables.embedded",
        description="Build the embedded model into a directory (by default the shipped one's recipe).",
    )
    cli.add_argument("out_dir", type=Path)
    for field, help_text in CLI_SPEC_FIELDS.items():
        default = getattr(DEFAULT_SPEC, field)
        cli.add_argument(f"--{field.replace('_', '-')}", type=int, help=f"{help_text} (default {default})")
    cli.add_argument("--snapshot-every", type=int, help="also save the model every N steps (learning curves)")
    cli.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="cuda: bf16 matrix products, not bit for bit"
    )
    args = cli.parse_args(argv)
    overrides = {field: getattr(args, field) for field in CLI_SPEC_FIELDS if getattr(args, field) is not None}
    spec = replace(DEFAULT_SPEC, **overrides)
    build(spec, args.out_dir, args.snapshot_every, args.device)
    print(f"built {args.out_dir} (version key {version_key(spec)})")
