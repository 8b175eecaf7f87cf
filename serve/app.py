"""The Ray Serve application: a FastAPI gateway in front of model replicas.

The gateway authenticates, validates and counts tokens, so bad requests never reach a model.
Each model replica holds the base model once; adapters are Ray Serve multiplexed models, loaded
on first use and evicted least-recently-used, and concurrent requests are batched across adapters
at every decoding step (serve.engine).
A fully fine-tuned winner is multiplexed the same way, as a whole model of its own.
"""

import asyncio
import concurrent.futures
import hashlib
import hmac
import time
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from transformers import AutoConfig

from serve import api
from serve.adapters import BASE_MODEL_ID, Registry
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
from trainables import models
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


@serve.deployment
class AdapterServer:
    """A model replica: the base model once, the adapters multiplexed on it, and the engine that
    batches requests across them (model_server sizes the deployment)."""

    def __init__(self, registry: Registry, limits: Limits):
        self.registry = registry
        self.engine = AdapterEngine(
            registry.base_model,
            registry.quantized_bases,
            max_batch_size=limits.max_batch_size,
            batch_wait_s=limits.batch_wait_s,
            mix_adapters=limits.mix_adapters,
        )

        # Ray Serve sizes a multiplexer's cache where it decorates the loader, and the size is a
        # server option, so the loader is decorated here. A function, not a bound method: the
        # multiplexer keeps its cache as an attribute of what it decorates.
        async def load_adapter(adapter_id: str) -> _MultiplexedAdapter:
            return await self._load(adapter_id)

        multiplexed = serve.multiplexed(max_num_models_per_replica=limits.max_adapters_per_replica)
        self.load_adapter = multiplexed(load_adapter)

    async def _load(self, adapter_id: str) -> _MultiplexedAdapter:
        adapter = self.registry.adapters[adapter_id]
        if adapter.serving.standalone:
            read = partial(read_model, adapter_id, adapter.path)
        else:
            read = partial(read_adapter, adapter_id, adapter.path, adapter.serving)
        loaded = await asyncio.to_thread(read)
        self.engine.add(loaded)
        return _MultiplexedAdapter(self.engine, loaded)

    async def complete(self, request: EngineRequest) -> Completion:
        # The engine batches across requests at every decoding step; an adapter evicted before
        # its request got in (more adapters in flight than a replica holds) is loaded again.
        while True:
            if request.adapter:
                await self.load_adapter(request.adapter)
            done = await asyncio.wrap_future(self.engine.submit(request))
            if done is not None:
                return done


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


# No CPU reserved: it only parses, tokenizes and awaits, and the model replicas hold the cores.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    """The HTTP front (gateway sizes the deployment): it authenticates, validates and counts tokens,
    then hands each request to the model replicas (`server`)."""

    def __init__(
        self, server: DeploymentHandle, registry: Registry, limits: Limits, api_key_digest: bytes | None
    ):
        self.server, self.registry = server, registry
        self.limits, self.api_key_digest = limits, api_key_digest
        path = models.resolve(registry.base_model)
        self.tokenizer = models.load_tokenizer(path)
        self.context_length = AutoConfig.from_pretrained(path).max_position_embeddings
        # A prompt longer than this has more tokens than the limit, whatever they are: it is refused
        # without tokenizing it (the longest token's text is at most as long as its vocabulary entry).
        longest_token = max(map(len, self.tokenizer.get_vocab()), default=0)
        self.max_prompt_chars = limits.max_prompt_tokens * max(CHARS_PER_TOKEN, longest_token)
        self.created = int(time.time())
        # One thread: off the event loop, but one encoding at a time, as a fast tokenizer shared
        # by threads can fail ("Already borrowed") when calls overlap.
        self.tokenizing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        # Each task's answers get the budget its adapters were evaluated with: the trials'
        # computation, on the same base model's tokenizer. The server's cap still applies.
        self.task_max_tokens = {
            task_ref: min(generation_budget(task_ref, self.tokenizer), limits.max_tokens)
            for task_ref in {adapter.task_ref for adapter in registry.adapters.values()}
        }

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The HTTP app, with this gateway's limits and key: Ray Serve asks for it after __init__."""
        app = FastAPI(title="peft-sweeps", docs_url=None, redoc_url=None)
        app.add_middleware(BodyLimit, limit=self.limits.max_body_bytes)
        if self.limits.loopback_hosts_only:
            app.add_middleware(LoopbackHosts)
        app.middleware("http")(self._authenticate)
        app.add_exception_handler(ApiError, _api_error)
        app.add_exception_handler(RequestValidationError, _invalid)
        app.add_exception_handler(Exception, _unexpected)
        app.add_exception_handler(HTTPException, _http)
        app.add_middleware(Admission, limit=self.limits.max_gateway_requests)  # the outermost
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_api_route("/v1/tasks/{task}", self.run_task, methods=["POST"])
        return app

    async def _authenticate(self, request: Request, call_next):
        if self.api_key_digest and request.url.path != "/healthz":
            given = bearer_token(request.headers.get("authorization", ""))
            if not hmac.compare_digest(key_digest(given), self.api_key_digest):
                body = api.error_body("missing or wrong API key", "authentication_error")
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    def _check_model(self, model: str) -> str | None:
        if model == BASE_MODEL_ID:
            return None
        if model not in self.registry.adapters:
            raise ApiError(404, f"unknown model '{model}'; GET /v1/models lists them", param="model")
        return model

    async def _run(self, request: EngineRequest) -> Completion:
        if len(request.prompt) > self.max_prompt_chars:
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
            self.tokenizing, self.tokenizer, request.prompt
        )
        prompt_tokens = len(encoded["input_ids"])
        if not prompt_tokens:  # nothing to continue: a prefill of no tokens fails in the model
            raise ApiError(400, "the prompt is empty: it has no tokens to continue", param="prompt")
        if prompt_tokens > self.limits.max_prompt_tokens:
            raise ApiError(
                413, f"prompt is {prompt_tokens} tokens; the limit is {self.limits.max_prompt_tokens}"
            )
        adapter = self.registry.adapters.get(request.adapter or "")
        in_front = adapter.serving.prompt_positions if adapter else 0
        if in_front + prompt_tokens + request.max_tokens > self.context_length:
            virtual = f" after its adapter's {in_front} virtual tokens" if in_front else ""
            message = (
                f"prompt ({prompt_tokens}{virtual}) plus max_tokens exceeds the model's "
                f"{self.context_length} tokens"
            )
            raise ApiError(400, message, param="max_tokens")
        handle = self.server.options(multiplexed_model_id=request.adapter or "")
        response = handle.complete.remote(request)
        try:
            return await asyncio.wait_for(response, timeout=self.limits.request_timeout_s)
        except BackPressureError:
            raise ApiError(503, "the server is at capacity; retry later", "server_busy") from None
        except TimeoutError:
            response.cancel()
            raise ApiError(504, f"no answer within {self.limits.request_timeout_s:g} s", "timeout") from None

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
            prompt,
            self._check_model(body.model),
            max_tokens,
            sampling,
            body.stop_sequences(),
            min_tokens=body.min_tokens,
        )

    async def healthz(self) -> dict:
        return {"status": "ok", "adapters": len(self.registry.adapters)}

    async def list_models(self) -> dict:
        base = {
            "id": BASE_MODEL_ID,
            "object": "model",
            "created": self.created,
            "owned_by": "peft-sweeps",
        }
        entries = [base | {"base_model": self.registry.base_model}]
        for adapter in self.registry.adapters.values():
            details = {
                "task": adapter.task,
                "method": adapter.method,
                "validation_quality": adapter.quality,
            }
            entries.append(base | {"id": adapter.adapter_id} | details)
        return {"object": "list", "data": entries}

    async def completions(self, body: api.CompletionRequest) -> dict:
        done = await self._run(self._engine_request(body, body.prompt))
        return api.completion_body(
            body.model, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens
        )

    async def chat(self, body: api.ChatRequest) -> dict:
        done = await self._run(self._engine_request(body, body.prompt()))
        return api.chat_body(
            body.model, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens
        )

    async def run_task(self, task: str, body: api.TaskRequest) -> dict:
        adapters = self.registry.for_task(task)
        if not adapters:
            raise ApiError(404, f"no served adapter for task '{task}'", param="task")
        spec = get_task(adapters[0].task_ref)
        model = body.model or adapters[0].adapter_id
        if (
            model != BASE_MODEL_ID
            and model in self.registry.adapters
            and model not in {a.adapter_id for a in adapters}
        ):
            raise ApiError(400, f"model '{model}' was not trained for task '{task}'", param="model")
        inputs = _task_inputs(spec, body.inputs())
        started = time.perf_counter()
        max_tokens = self.task_max_tokens[adapters[0].task_ref]
        request = EngineRequest(spec.format_prompt(inputs), self._check_model(model), max_tokens)
        done = await self._run(request)
        return {
            "task": task,
            "model": model,
            "result": spec.parse(done.text),
            "output": done.text,
            "latency_s": time.perf_counter() - started,
            "usage": api.usage(done.prompt_tokens, done.completion_tokens),
        }


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


def build(registry: Registry, limits: Limits, api_key_digest: bytes | None) -> Application:
    """The bound application, ready for serve.run."""
    server = model_server(limits).bind(registry, limits)
    return gateway(limits).bind(server, registry, limits, api_key_digest)
