"""The Ray Serve application: a FastAPI gateway in front of model replicas.

The gateway authenticates, validates and counts tokens, so bad requests never reach a model; it
holds the registry, which the admin API changes while serving. Each model replica holds each base
model once; adapters are Ray Serve multiplexed models, loaded on first use from the entry their
request brings and evicted least-recently-used, and concurrent requests are batched across adapters
at every decoding step (serve.engine).
A fully fine-tuned winner is multiplexed the same way, as a whole model of its own.
"""

import asyncio
import concurrent.futures
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from transformers import AutoConfig, PreTrainedTokenizerBase

from serve import api
from serve.adapters import Adapter, Choice, OutsideRoots, Registry, load_registry
from serve.engine import (
    AdapterEngine,
    Completion,
    LoadedAdapter,
    LoadedModel,
    Sampling,
    read_adapter,
    read_model,
)
from serve.engine import Request as EngineRequest
from serve.limits import CHARS_PER_TOKEN, GATEWAY_SPARE_SLOTS, LOOPBACK_NAMES, Limits
from serve.metrics import NO_MODEL, GatewayMetrics, ReplicaLoad, ReplicaMetrics, Served
from trainables import models
from trainables.config import ConfigError
from trainables.tasks import generation_budget, get_task


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


class _MultiplexedAdapter:
    """What Ray Serve's multiplexer caches per adapter; eviction calls __del__, which unloads it."""

    def __init__(self, engine: AdapterEngine, adapter: LoadedAdapter | LoadedModel):
        self.engine, self.adapter = engine, adapter

    def __del__(self):
        self.engine.remove(self.adapter)


# How often a model replica's load gauges are set, between requests too.
LOAD_SAMPLE_S = 1.0


@serve.deployment
class AdapterServer:
    """A model replica: each base model once, the adapters multiplexed on it, and an engine per
    base that batches requests across them (model_server sizes the deployment).

    It keeps no registry of its own: each request brings its adapter's entry from the gateway,
    whose registry changes at run time, and the adapter is loaded by its load key."""

    def __init__(self, registry: Registry, limits: Limits):
        self.engines = {
            base_model: AdapterEngine(
                base_model,
                registry.quantized_bases(base_model),
                max_batch_size=limits.max_batch_size,
                batch_wait_s=limits.batch_wait_s,
                mix_adapters=limits.mix_adapters,
                lookup=limits.lookup(),
            )
            for base_model in registry.bases.values()
        }
        self.entries: dict[str, Adapter] = {}  # by load key: what the multiplexed loader reads
        self.replica = serve.get_replica_context().replica_tag
        self.capacity = limits.max_batch_size * len(self.engines)
        self.metrics = ReplicaMetrics()
        threading.Thread(target=self._sample_load, name="load-gauges", daemon=True).start()

        # Ray Serve sizes a multiplexer's cache where it decorates the loader, and the size is a
        # server option, so the loader is decorated here. A function, not a bound method: the
        # multiplexer keeps its cache as an attribute of what it decorates.
        async def load_adapter(load_key: str) -> _MultiplexedAdapter:
            return await self._load(load_key)

        multiplexed = serve.multiplexed(max_num_models_per_replica=limits.max_adapters_per_replica)
        self.load_adapter = multiplexed(load_adapter)

    def load(self) -> ReplicaLoad:
        each = [engine.load() for engine in self.engines.values()]
        return ReplicaLoad(
            self.replica, sum(queued for queued, _ in each), sum(rows for _, rows in each), self.capacity
        )

    def _sample_load(self) -> None:
        while True:
            self.metrics.record(self.load())
            time.sleep(LOAD_SAMPLE_S)

    async def _load(self, load_key: str) -> _MultiplexedAdapter:
        adapter = self.entries[load_key]
        if adapter.serving.standalone:
            read = partial(read_model, load_key, adapter.path)
        else:
            read = partial(read_adapter, load_key, adapter.path, adapter.serving)
        loaded = await asyncio.to_thread(read)
        engine = self.engines[adapter.base_model]
        engine.add(loaded)
        return _MultiplexedAdapter(engine, loaded)

    async def complete(self, request: EngineRequest, base_model: str, adapter: Adapter | None) -> Served:
        """`request` on `base_model`, by `adapter` (None: the base itself), whose load key the
        request names."""
        engine = self.engines[base_model]
        # The engine batches across requests at every decoding step; an adapter evicted before
        # its request got in (more adapters in flight than a replica holds) is loaded again.
        while True:
            if adapter is not None:
                self.entries[adapter.load_key] = adapter
                await self.load_adapter(adapter.load_key)
            ticket = engine.submit(request)
            done = await asyncio.wrap_future(ticket)
            if done is not None:
                return Served(done, time.monotonic() - ticket.first_token_at, self.load())


class BodyLimit:
    """Refuses a request body larger than `limit` bytes with a 413: at once where Content-Length
    declares it, else as soon as the body received passes it, so no large body is ever held."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def too_large(self) -> ApiError:
        return ApiError(413, f"request body is larger than {self.limit} bytes (--max-body-bytes)")

    async def _refuse(self, scope, receive, send) -> None:
        error = self.too_large()
        response = JSONResponse(api.error_body(error.message, error.kind), status_code=error.status)
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        received, refused = 0, False

        async def counted():
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                if not refused:
                    refused = True
                    await self._refuse(scope, receive, send)
                # Stops the app reading. Whatever it answers then is dropped (below): FastAPI turns
                # an error while it parses a body into a 400 of its own.
                raise self.too_large()
            return message

        async def unless_refused(message):
            if not refused:
                await send(message)

        return await self.app(scope, counted, unless_refused)


class Admission:
    """At most `limit` requests in the gateway at once; one more gets a 503 in OpenAI's shape at
    once. /healthz is never refused: it answers at once, and says whether the server is up.

    Ray's own bound on the gateway (max_ongoing_requests, max_queued_requests: `gateway`) lies
    beyond this one, as Ray's proxy answers what it refuses in plain text."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.held = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        if self.held >= self.limit:
            message = f"the server holds {self.limit} requests (--max-gateway-requests); retry later"
            response = JSONResponse(
                api.error_body(message, "server_busy"), status_code=503, headers={"retry-after": "1"}
            )
            return await response(scope, receive, send)
        self.held += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.held -= 1


def is_loopback_host(header: str) -> bool:
    """Whether a Host header ('127.0.0.1:8000', 'localhost', '[::1]:8000') names this machine."""
    name = header.rsplit("]", 1)[0].lstrip("[") if header.startswith("[") else header.rsplit(":", 1)[0]
    return name.lower() in LOOPBACK_NAMES or name.startswith("127.")


class LoopbackHosts:
    """Answers only requests whose Host header names a loopback address (a 421 JSON error else)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(host):
                body = api.error_body(f"host '{host}' is not this server's: it answers on loopback only",
                                      "invalid_request_error")  # fmt: skip
                return await JSONResponse(body, status_code=421)(scope, receive, send)
        return await self.app(scope, receive, send)


def key_digest(key: str) -> bytes:
    """What the gateway keeps of the API key: Ray pickles the gateway's constructor arguments into
    its object store, which then holds this digest, never the key itself."""
    return hashlib.sha256(key.encode()).digest()


def bearer_token(authorization: str) -> str:
    """The token of an 'Authorization: Bearer TOKEN' header; the scheme's case does not matter."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _api_error(_: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(api.error_body(error.message, error.kind, error.param), status_code=error.status)


async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in error.errors()]
    return JSONResponse(api.error_body("; ".join(problems), "invalid_request_error"), status_code=422)


async def _unexpected(_: Request, error: Exception) -> JSONResponse:
    # Whatever else goes wrong, here or in a model replica, the client still gets OpenAI's shape.
    body = api.error_body(f"internal error: {type(error).__name__}", "server_error")
    return JSONResponse(body, status_code=500)


async def _http(_: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(
        api.error_body(str(error.detail), "invalid_request_error"), status_code=error.status_code
    )


@dataclass(frozen=True)
class _BaseText:
    """What the gateway needs of a base model to check and count a prompt: its tokenizer, its
    context length, and the longest prompt in characters that the token limit lets in."""

    tokenizer: PreTrainedTokenizerBase
    context_length: int
    max_prompt_chars: int

    @classmethod
    def of(cls, base_model: str, limits: Limits) -> "_BaseText":
        path = models.resolve(base_model)
        tokenizer = models.load_tokenizer(path)
        # A prompt longer than this has more tokens than the limit, whatever they are: it is refused
        # without tokenizing it (the longest token's text is at most as long as its vocabulary entry).
        longest_token = max(map(len, tokenizer.get_vocab()), default=0)
        return cls(
            tokenizer,
            AutoConfig.from_pretrained(path).max_position_embeddings,
            limits.max_prompt_tokens * max(CHARS_PER_TOKEN, longest_token),
        )


@dataclass(frozen=True)
class _Target:
    """What a request's `model` names: a base model, or an adapter on one."""

    model: str  # the id the client gave
    base_model: str
    adapter: Adapter | None


# The routes whose answers are counted per model (GatewayMetrics).
COUNTED_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/tasks/")


# No CPU reserved: it only parses, tokenizes and awaits, and the model replicas hold the cores.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    """The HTTP front (gateway sizes the deployment): it authenticates, validates and counts tokens,
    then hands each request to the model replicas (`server`).

    It holds the registry: one replica, so a change through the admin API is what every request
    after it sees, and each request hands its adapter's entry to the model replica that answers it."""

    def __init__(
        self,
        server: DeploymentHandle,
        registry: Registry,
        limits: Limits,
        api_key_digest: bytes | None,
        adapter_roots: tuple[Path, ...] = (),
    ):
        self.server, self.registry = server, registry
        self.limits, self.api_key_digest, self.adapter_roots = limits, api_key_digest, adapter_roots
        self.bases = {base_model: _BaseText.of(base_model, limits) for base_model in registry.bases.values()}
        # The base copies the model replicas hold (they load none at run time).
        self.held = {
            base_model: registry.quantized_bases(base_model) for base_model in registry.bases.values()
        }
        self.created = int(time.time())
        # One thread: off the event loop, but one encoding at a time, as a fast tokenizer shared
        # by threads can fail ("Already borrowed") when calls overlap.
        self.tokenizing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.task_max_tokens: dict[tuple[str, str], int] = {}
        self._budget(registry.adapters.values())
        self.registrations = 0  # adapters added at run time, each with a number of its own
        self.metrics = GatewayMetrics()

    def _budget(self, adapters) -> None:
        """Each task's answers get the budget its adapters were evaluated with: the trials'
        computation, on their base model's tokenizer. The server's cap still applies."""
        for key in {(adapter.task_ref, adapter.base_model) for adapter in adapters} - set(
            self.task_max_tokens
        ):
            task_ref, base_model = key
            budget = generation_budget(task_ref, self.bases[base_model].tokenizer)
            self.task_max_tokens[key] = min(budget, self.limits.max_tokens)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The HTTP app, with this gateway's limits and key: Ray Serve asks for it after __init__."""
        app = FastAPI(title="peft-sweeps", docs_url=None, redoc_url=None)
        app.add_middleware(BodyLimit, limit=self.limits.max_body_bytes)
        if self.limits.loopback_hosts_only:
            app.add_middleware(LoopbackHosts)
        app.middleware("http")(self._authenticate)
        app.middleware("http")(self._count_errors)
        app.add_exception_handler(ApiError, _api_error)
        app.add_exception_handler(RequestValidationError, _invalid)
        app.add_exception_handler(Exception, _unexpected)
        app.add_exception_handler(HTTPException, _http)
        app.add_middleware(Admission, limit=self.limits.max_gateway_requests)  # the outermost
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/stats", self.stats, methods=["GET"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_api_route("/v1/tasks/{task}", self.run_task, methods=["POST"])
        app.add_api_route("/v1/adapters", self.add_adapters, methods=["POST"])
        app.add_api_route("/v1/adapters/{adapter_id}", self.remove_adapter, methods=["DELETE"])
        return app

    async def _authenticate(self, request: Request, call_next):
        if self.api_key_digest and request.url.path != "/healthz":
            given = bearer_token(request.headers.get("authorization", ""))
            if not hmac.compare_digest(key_digest(given), self.api_key_digest):
                body = api.error_body("missing or wrong API key", "authentication_error")
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    async def _count_errors(self, request: Request, call_next):
        """A model request answered with an error counts under the model it named, where known
        (the answered ones are counted where they are answered, `_run`)."""
        if not request.url.path.startswith(COUNTED_ROUTES):
            return await call_next(request)
        try:
            response = await call_next(request)
        except Exception:
            self.metrics.failed(getattr(request.state, "model", NO_MODEL), 500)
            raise
        if response.status_code >= 400:
            self.metrics.failed(getattr(request.state, "model", NO_MODEL), response.status_code)
        return response

    def _target(self, model: str, request: Request) -> _Target:
        registry = self.registry
        if model in registry.bases:
            target = _Target(model, registry.bases[model], None)
        elif model in registry.adapters:
            adapter = registry.adapters[model]
            target = _Target(model, adapter.base_model, adapter)
        else:
            raise ApiError(404, f"unknown model '{model}'; GET /v1/models lists them", param="model")
        request.state.model = model  # a known id: the tag its answer is counted under
        return target

    async def _run(self, request: EngineRequest, target: _Target) -> Completion:
        self.metrics.started(target.model)
        try:
            return await self._answer(request, target)
        finally:
            self.metrics.ended(target.model)

    async def _answer(self, request: EngineRequest, target: _Target) -> Completion:
        started = time.perf_counter()
        text = self.bases[target.base_model]
        if len(request.prompt) > text.max_prompt_chars:
            raise ApiError(
                413,
                f"prompt is {len(request.prompt)} characters, more than {self.limits.max_prompt_tokens} "
                f"tokens (the limit) can hold",
            )
        if not api.encodable(request.prompt, *request.stop):
            raise ApiError(
                400, "the prompt or a stop string is not valid text: it cannot be encoded as UTF-8"
            )
        # Off the event loop: a long prompt must not hold up every other request, /healthz included.
        encoded = await asyncio.get_running_loop().run_in_executor(
            self.tokenizing, text.tokenizer, request.prompt
        )
        prompt_tokens = len(encoded["input_ids"])
        if not prompt_tokens:  # nothing to continue: a prefill of no tokens fails in the model
            raise ApiError(400, "the prompt is empty: it has no tokens to continue", param="prompt")
        if prompt_tokens > self.limits.max_prompt_tokens:
            raise ApiError(
                413, f"prompt is {prompt_tokens} tokens; the limit is {self.limits.max_prompt_tokens}"
            )
        in_front = target.adapter.serving.prompt_positions if target.adapter else 0
        if in_front + prompt_tokens + request.max_tokens > text.context_length:
            virtual = f" after its adapter's {in_front} virtual tokens" if in_front else ""
            message = (
                f"prompt ({prompt_tokens}{virtual}) plus max_tokens exceeds the model's "
                f"{text.context_length} tokens"
            )
            raise ApiError(400, message, param="max_tokens")
        request.adapter = target.adapter.load_key if target.adapter else None
        handle = self.server.options(multiplexed_model_id=request.adapter or "")
        response = handle.complete.remote(request, target.base_model, target.adapter)
        try:
            served = await asyncio.wait_for(response, timeout=self.limits.request_timeout_s)
        except BackPressureError:
            raise ApiError(503, "the server is at capacity; retry later", "server_busy") from None
        except TimeoutError:
            response.cancel()
            raise ApiError(504, f"no answer within {self.limits.request_timeout_s:g} s", "timeout") from None
        self.metrics.answered(target.model, served, time.perf_counter() - started)
        return served.completion

    def _engine_request(self, body: api.SamplingFields, prompt: str) -> EngineRequest:
        max_tokens = body.max_tokens or 16
        if max_tokens > self.limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens {max_tokens} is above the cap of {self.limits.max_tokens}",
                param="max_tokens",
            )
        if body.min_tokens > max_tokens:
            raise ApiError(
                400, f"min_tokens {body.min_tokens} is above max_tokens {max_tokens}", param="min_tokens"
            )
        sampling = Sampling(body.temperature, body.top_p, body.seed)
        return EngineRequest(
            prompt, None, max_tokens, sampling, body.stop_sequences(), min_tokens=body.min_tokens
        )

    async def healthz(self) -> dict:
        return {"status": "ok", "adapters": len(self.registry.adapters)}

    async def list_models(self) -> dict:
        base = {"object": "model", "created": self.created, "owned_by": "peft-sweeps"}
        registry = self.registry
        entries = [{"id": model} | base | {"base_model": path} for model, path in registry.bases.items()]
        parents = {path: model for model, path in registry.bases.items()}
        for adapter in registry.adapters.values():
            details = {
                "parent": parents[adapter.base_model],
                "task": adapter.task,
                "method": adapter.method,
                "validation_quality": adapter.quality,
            }
            entries.append({"id": adapter.adapter_id} | base | details)
        return {"object": "list", "data": entries}

    async def stats(self) -> dict:
        return self.metrics.stats()

    async def completions(self, body: api.CompletionRequest, request: Request) -> dict:
        target = self._target(body.model, request)
        done = await self._run(self._engine_request(body, body.prompt), target)
        return api.completion_body(
            body.model, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens
        )

    async def chat(self, body: api.ChatRequest, request: Request) -> dict:
        target = self._target(body.model, request)
        done = await self._run(self._engine_request(body, body.prompt()), target)
        return api.chat_body(
            body.model, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens
        )

    async def run_task(self, task: str, body: api.TaskRequest, request: Request) -> dict:
        adapters = self.registry.for_task(task)
        if not adapters:
            raise ApiError(404, f"no served adapter for task '{task}'", param="task")
        best = adapters[0]  # the first sweep's best winner of the task
        model = body.model or best.adapter_id
        if model in self.registry.adapters and model not in {a.adapter_id for a in adapters}:
            raise ApiError(400, f"model '{model}' was not trained for task '{task}'", param="model")
        target = self._target(model, request)
        spec = get_task(best.task_ref)
        inputs = _task_inputs(spec, body.inputs())
        started = time.perf_counter()
        max_tokens = self.task_max_tokens[(best.task_ref, best.base_model)]
        done = await self._run(EngineRequest(spec.format_prompt(inputs), None, max_tokens), target)
        return {
            "task": task,
            "model": model,
            "result": spec.parse(done.text),
            "output": done.text,
            "latency_s": time.perf_counter() - started,
            "usage": api.usage(done.prompt_tokens, done.completion_tokens),
        }

    def _admin(self) -> None:
        if self.api_key_digest is None:
            raise ApiError(
                403, "the admin API is off: the server runs without an API key", "permission_error"
            )

    async def add_adapters(self, body: api.AddAdapters) -> dict:
        """Registers a sweep's winners, or the trials named, found only under the allowed roots."""
        self._admin()
        if not self.adapter_roots:
            raise ApiError(403, "no --adapter-root was given: adding adapters is off", "permission_error")
        directory = self.adapter_roots[0] / body.sweep  # a relative path: under the first root
        choice = Choice(trials=tuple(body.trials or ()))
        try:
            found = await asyncio.to_thread(load_registry, [directory], choice, self.adapter_roots)
        except OutsideRoots as error:
            raise ApiError(403, str(error), "permission_error", param="sweep") from None
        except ConfigError as error:
            raise ApiError(400, str(error), param="sweep") from None
        added = list(found.adapters.values())
        for adapter in added:
            self._servable(adapter)
        try:
            # On the tokenizing thread: the tokenizers are not to be called from two threads at once.
            await asyncio.get_running_loop().run_in_executor(self.tokenizing, self._budget, added)
        except ConfigError as error:  # a task file's budget that cannot hold its targets
            raise ApiError(400, str(error), param="sweep") from None
        # From here to the assignment nothing awaits: another change cannot come in between and be lost.
        self.registrations += 1
        try:
            self.registry = self.registry.adding(added, self.registrations)
        except ConfigError as error:
            raise ApiError(409, str(error), param="sweep") from None
        return {"added": [adapter.adapter_id for adapter in added]}

    def _servable(self, adapter: Adapter) -> None:
        """Refuses an adapter whose base the model replicas do not hold."""
        if adapter.base_model not in self.held:
            raise ApiError(
                409, f"'{adapter.adapter_id}' is on base model {adapter.base_model}, which this server "
                "does not hold; serve its sweep from the start", param="sweep",
            )  # fmt: skip
        if (
            not adapter.serving.standalone
            and adapter.serving.quantize_4bit not in self.held[adapter.base_model]
        ):
            precision = "4-bit" if adapter.serving.quantize_4bit else "full-precision"
            raise ApiError(
                409, f"'{adapter.adapter_id}' needs the {precision} base, which this server did not load at "
                "start; serve its sweep from the start", param="sweep",
            )  # fmt: skip

    async def remove_adapter(self, adapter_id: str) -> dict:
        """Unregisters an adapter: requests already running finish, later ones get a 404."""
        self._admin()
        if adapter_id in self.registry.bases:
            raise ApiError(400, f"'{adapter_id}' is a base model: it stays", param="adapter_id")
        if adapter_id not in self.registry.adapters:
            raise ApiError(
                404, f"unknown adapter '{adapter_id}'; GET /v1/models lists them", param="adapter_id"
            )
        self.registry = self.registry.without(adapter_id)
        return {"removed": adapter_id}


def _task_inputs(spec, given: dict) -> dict:
    """The task's input fields: required ones non-empty text, optional ones text or a list of text."""
    if unknown := sorted(set(given) - set(spec.inputs) - set(spec.optional_inputs)):
        raise ApiError(
            422,
            f"unknown field '{unknown[0]}'; task '{spec.name}' takes {', '.join(spec.inputs)}",
            param=unknown[0],
        )
    for field in spec.inputs:
        if not isinstance(given.get(field), str) or not given[field].strip():
            raise ApiError(422, f"field '{field}' must be non-empty text", param=field)
    for field in spec.optional_inputs:
        value = given.get(field)
        if (
            value is not None
            and not isinstance(value, str)
            and not (isinstance(value, list) and all(isinstance(item, str) for item in value))
        ):
            raise ApiError(422, f"field '{field}' must be text or a list of text", param=field)
    return {field: given.get(field) for field in (*spec.inputs, *spec.optional_inputs)}


def model_server(limits: Limits) -> Deployment:
    """The model replicas' deployment, sized by the limits."""
    return AdapterServer.options(
        num_replicas=limits.replicas,
        max_ongoing_requests=2 * limits.max_batch_size,
        max_queued_requests=limits.max_queued_requests,
        ray_actor_options={"num_gpus": limits.gpus_per_replica, "num_cpus": limits.cpus_per_replica},
    )


def gateway(limits: Limits) -> Deployment:
    """The gateway's deployment, sized by the limits: a request beyond its slots waits in Ray's
    proxy, in a queue of max_gateway_queue (Ray refuses more with a 503 of its own). Its own
    admission (Admission) refuses requests beyond max_gateway_requests in OpenAI's shape first."""
    return Gateway.options(
        max_ongoing_requests=limits.max_gateway_requests + GATEWAY_SPARE_SLOTS,
        max_queued_requests=limits.max_gateway_queue,
    )


def build(
    registry: Registry, limits: Limits, api_key_digest: bytes | None, adapter_roots: tuple[Path, ...] = ()
) -> Application:
    """The bound application, ready for serve.run; adapter_roots: where the admin API may find
    sweeps, resolved."""
    server = model_server(limits).bind(registry, limits)
    return gateway(limits).bind(server, registry, limits, api_key_digest, adapter_roots)
