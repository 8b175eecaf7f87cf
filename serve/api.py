"""OpenAI-compatible request and response bodies, validated at the edge of the server."""

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARACTERS = 256
MAX_MESSAGES = 256
MAX_SEED = 2**63 - 1
# Below this a temperature decodes greedily (as vLLM's does): logits divided by a much smaller one
# overflow, and no token could be sampled.
GREEDY_BELOW_TEMPERATURE = 1e-5


class _Strict(BaseModel):
    # Clients send fields we do not use (user, logit_bias...): ignore them rather than fail.
    model_config = ConfigDict(extra="ignore")


class SamplingFields(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    # vLLM's extension: EOS is held back until this many tokens (answers of a fixed length, for benchmarks).
    min_tokens: int = Field(0, ge=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    # What torch's generators take: a larger seed would raise on the decoding thread.
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: Literal[1] = 1
    stream: Literal[False] = False

    @field_validator("temperature")
    @classmethod
    def _tiny_is_greedy(cls, temperature: float) -> float:
        return 0.0 if temperature < GREEDY_BELOW_TEMPERATURE else temperature

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(text) > MAX_STOP_CHARACTERS for text in stops):
            raise ValueError(f"a stop sequence of at most {MAX_STOP_CHARACTERS} characters")
        return stops

    def stop_sequences(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class CompletionRequest(SamplingFields):
    prompt: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)

    def prompt(self) -> str:
        """The adapters were trained on plain prompts, so a chat is the messages' text, in order."""
        return "\n".join(message.content for message in self.messages) + "\n"


class TaskRequest(_Strict):
    model_config = ConfigDict(extra="allow")  # the task's own input fields, checked against the task
    model: str | None = None

    def inputs(self) -> dict:
        return dict(self.model_extra or {})


class AddAdapters(BaseModel):
    """POST /v1/adapters: a sweep's directory (under an allowed root), and the trials to serve
    from it instead of its winners."""

    model_config = ConfigDict(extra="forbid")
    sweep: str = Field(min_length=1, max_length=4096)
    trials: list[str] | None = Field(None, min_length=1, max_length=256)


def encodable(*texts: str) -> bool:
    """Whether every text is valid Unicode text (a lone surrogate such as "\\ud800" is not): the
    tokenizer refuses it, and the client gets a 400 instead of an error from deep inside."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_body(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }
