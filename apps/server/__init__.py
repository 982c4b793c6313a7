"""An OpenAI-compatible HTTP server over one edgekit bundle: ``edgekit serve BUNDLE`` (Starlette + uvicorn,
``pip install 'edgekit[serve]'``).

Language bundles get ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (the OpenAI
API's request and response shapes, streaming as server-sent events, ``usage``, ``max_tokens``, ``stop``,
``temperature``, ``top_p``, ``seed``; extension: ``ignore_eos``).  Solver bundles (TRM/HRM) get the Sudoku page
at ``/solver`` and ``POST /v1/solve`` (apps/solver).  ``GET /health`` reports the queue.

One model session serves requests in turn, on one worker thread, through a bounded queue: a request that finds
``max_queue`` requests admitted (running or waiting) gets 429 at once.  A client that disconnects mid-stream
stops its generation at the next token and frees the session.  Every error is an OpenAI-shaped body
``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed request (bad JSON included), 401 for a
missing or wrong API key, 404 for an unknown model, 413 for a body over the limit, 429 when the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal

from edgekit.errors import EdgekitError, require

from ..textgen import ChatTemplate, Outcome, stop_token_ids, stream_text

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServerConfig:
    """host/port to bind (loopback by default); api_key: required as ``Authorization: Bearer KEY`` when set;
    model_name: the id clients send (default: the bundle directory's name); max_queue: requests admitted at
    once (running + waiting); max_body_bytes: largest request body."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str | None = None
    max_queue: int = 16
    max_body_bytes: int = 1 << 20


class ApiError(Exception):
    """An HTTP error with the OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- the queue ----------------------------------------------------------------------------------------------
@dataclass
class Ticket:
    """One admitted job: ``cancel`` is set when its client leaves; ``cancelled`` records whether the job ended
    because of that (None while it runs)."""

    cancel: threading.Event = field(default_factory=threading.Event)
    cancelled: bool | None = None


class Worker:
    """Runs session jobs one at a time on a single thread.  ``pending`` counts admitted jobs (running or waiting)
    and is touched only on the event loop's thread; a job leaves the count when it has really finished on the
    worker thread, not when its client leaves."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.pending = 0
        self.completed = 0
        self.cancelled = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-session")

    def submit(self, job: Callable[["Ticket"], Any]) -> tuple["Future[Any]", "Ticket"]:
        if self.pending >= self.max_queue:
            raise ApiError(429, f"the server is busy: {self.pending} requests are queued (limit {self.max_queue}); "
                           "retry shortly", type_="rate_limit_error", code="queue_full")
        loop = asyncio.get_running_loop()
        ticket = Ticket()
        self.pending += 1

        def run() -> Any:
            try:
                return job(ticket)
            finally:
                if ticket.cancelled is None:
                    ticket.cancelled = ticket.cancel.is_set()

        def done(_f: Any) -> None:
            try:
                loop.call_soon_threadsafe(self._finished, bool(ticket.cancelled) or _f.cancelled())
            except RuntimeError:  # the loop has closed (shutdown)
                pass

        future = self.executor.submit(run)
        future.add_done_callback(done)
        return future, ticket

    def _finished(self, cancelled: bool) -> None:
        self.pending -= 1
        if cancelled:
            self.cancelled += 1
        else:
            self.completed += 1

    async def call(self, job: Callable[["Ticket"], Any]) -> Any:
        future, ticket = self.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client left: stop the generation at its next token
            ticket.cancel.set()
            raise

    def stream(self, job: Callable[[threading.Event], Iterator[Any]]) -> AsyncIterator[Any]:
        """Admit now (429 before any response starts), run ``job`` on the worker thread, hand its items over."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                pass

        def run(ticket: Ticket) -> None:
            try:
                for item in job(ticket.cancel):
                    put(("item", item))
                ticket.cancelled = ticket.cancel.is_set()  # before "end": the response sets cancel when it ends
                put(("end", None))
            except BaseException as exc:  # handed to the response, which turns it into an error event
                put(("error", exc))

        future, ticket = self.submit(run)
        cancel = ticket.cancel

        async def items() -> AsyncIterator[Any]:
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "end":
                        return
                    if kind == "error":
                        raise value
                    yield value
            finally:  # normal end, error, or the client disconnected (the response task was cancelled)
                cancel.set()
                future.cancel()

        return items()


# -- requests -----------------------------------------------------------------------------------------------
def _models() -> Any:
    pydantic = require("pydantic", "serve")
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

    Number = StrictFloat | StrictInt

    class Common(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)
        model: StrictStr
        max_tokens: StrictInt | None = None
        temperature: Number = Field(1.0, ge=0, le=2)
        top_p: Number = Field(1.0, gt=0, le=1)
        seed: StrictInt | None = None
        stop: StrictStr | list[StrictStr] | None = Field(None)
        stream: StrictBool = False
        stream_options: dict[str, Any] | None = None
        n: StrictInt = Field(1, ge=1, le=1)
        ignore_eos: StrictBool = False

    class CompletionRequest(Common):
        prompt: StrictStr | list[StrictStr] | list[StrictInt]
        max_tokens: StrictInt | None = 16  # the OpenAI default for completions

    class Part(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)
        type: Literal["text"]
        text: StrictStr

    class Message(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)
        role: Literal["system", "developer", "user", "assistant"]
        content: StrictStr | list[Part] | None = None

    class ChatRequest(Common):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: StrictInt | None = None

    return pydantic, CompletionRequest, ChatRequest


@dataclass(frozen=True)
class Job:
    """A validated generation request."""

    prompt_ids: list[int]
    params: Any
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool


class LanguageApp:
    """The /v1 text routes over one language session."""

    def __init__(self, session: Any, root: Path, name: str, worker: Worker) -> None:
        self.session, self.name, self.worker = session, name, worker
        self.template = ChatTemplate.from_bundle(root, session.manifest)
        self.stop_ids = stop_token_ids(session, self.template.stop_texts)
        self.pydantic, self.CompletionRequest, self.ChatRequest = _models()

    def parse(self, model: Any, body: bytes) -> Any:
        try:
            return model.model_validate_json(body)
        except self.pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            if first.get("type") == "json_invalid":
                raise ApiError(400, f"the request body is not valid JSON ({first.get('msg')})") from None
            raise ApiError(400, f"{loc or 'body'}: {first.get('msg')}", param=loc or None) from None

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {self.name!r}",
                           param="model", code="model_not_found")

    def job(self, req: Any, prompt_ids: list[int], max_tokens: int | None, default_max: int) -> Job:
        from edgekit.runtimes import SamplingParams

        n_ctx = self.session.n_ctx
        if len(prompt_ids) >= n_ctx:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; this model's context is {n_ctx} tokens",
                           param="prompt", code="context_length_exceeded")
        room = n_ctx - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(default_max, room)
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        if max_tokens > room:
            raise ApiError(400, f"max_tokens {max_tokens} + the prompt's {len(prompt_ids)} tokens exceed the "
                           f"context of {n_ctx} tokens; ask for at most {room}", param="max_tokens",
                           code="context_length_exceeded")
        stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if len(stops) > 4:
            raise ApiError(400, f"stop takes at most 4 sequences, got {len(stops)}", param="stop")
        # OpenAI's sampling has no top-k; 0 = no limit (greedy when temperature is 0)
        params = SamplingParams(max_tokens=max_tokens, temperature=float(req.temperature), top_k=0,
                                top_p=float(req.top_p), seed=req.seed, stop_at_eos=not req.ignore_eos)
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return Job(list(prompt_ids), params, tuple(s for s in stops if s), req.stream, include_usage)

    def completion_job(self, body: bytes) -> Job:
        req = self.parse(self.CompletionRequest, body)
        self.check_model(req.model)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(400, f"one prompt per request, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.session.tokenize(prompt) if prompt else []
        else:
            vocab = self.session.vocab_size
            if any(not 0 <= t < vocab for t in prompt):
                raise ApiError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
            ids = list(prompt)
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return self.job(req, ids, req.max_tokens, 16)

    def chat_job(self, body: bytes) -> Job:
        req = self.parse(self.ChatRequest, body)
        self.check_model(req.model)
        messages = []
        for m in req.messages:
            content = m.content if isinstance(m.content, str) or m.content is None else "".join(
                p.text for p in m.content)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        try:
            text = self.template.render(messages)
        except EdgekitError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        ids = self.session.tokenize(text, add_special=False)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return self.job(req, ids, max_tokens, 256)

    def run(self, job: Job, cancel: threading.Event, outcome: Outcome) -> Iterator[str]:
        return stream_text(self.session, job.prompt_ids, job.params, outcome, self.stop_ids, job.stops, cancel)

    @staticmethod
    def usage(outcome: Outcome) -> dict[str, int]:
        n, m = outcome.prompt_tokens, len(outcome.tokens)
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(session: Any, root: Path, config: ServerConfig = ServerConfig()) -> Any:
    """The ASGI application (Starlette) over an open session.  The caller owns the session and closes it."""
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
    from starlette.routing import Route

    name = config.model_name or Path(root).resolve().name
    worker = Worker(config.max_queue)
    created = int(time.time())
    language = LanguageApp(session, Path(root), name, worker) if hasattr(session, "stream") else None

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise ApiError(413, f"the request body is {declared} bytes; the limit is {config.max_body_bytes}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > config.max_body_bytes:
                    raise ApiError(413, f"the request body exceeds the limit of {config.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected while sending the request") from None
        return b"".join(chunks)

    def authorise(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "a valid API key is required (header `Authorization: Bearer KEY`)",
                           code="invalid_api_key")

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                authorise(request)
                return await handler(request)
            except ApiError as exc:
                return error(exc)
            except EdgekitError as exc:  # a check of the runtime (e.g. sampling values) refused the request
                return error(ApiError(400, str(exc)))

        return endpoint

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "edgekit",
             "kind": session.manifest.get("kind"), "engine": session.engine}]})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": name, "queue": {
            "pending": worker.pending, "max": worker.max_queue, "completed": worker.completed,
            "cancelled": worker.cancelled}})

    def text_endpoint(chat: bool) -> Callable[[Request], Any]:
        kind = "chat.completion" if chat else "text_completion"
        prefix = "chatcmpl" if chat else "cmpl"

        async def handler(request: Request) -> Response:
            if language is None:
                raise ApiError(400, f"{name} is a {session.manifest.get('kind')} model: use POST /v1/solve or "
                               "the page at /solver", param="model")
            body = await read_body(request)
            job = language.chat_job(body) if chat else language.completion_job(body)
            rid = f"{prefix}-{uuid.uuid4().hex}"
            head = {"id": rid, "object": kind + (".chunk" if chat and job.stream else ""), "created": int(time.time()),
                    "model": name}
            if not job.stream:
                def complete(ticket: Ticket) -> tuple[str, Outcome]:
                    outcome = Outcome()
                    return "".join(language.run(job, ticket.cancel, outcome)), outcome

                text, outcome = await worker.call(complete)
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                              "finish_reason": outcome.finish_reason}
                else:
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": outcome.finish_reason}
                return JSONResponse({**head, "choices": [choice], "usage": language.usage(outcome)})

            outcome = Outcome()
            pieces = worker.stream(lambda cancel: language.run(job, cancel, outcome))

            def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
                if chat:
                    d: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                        {} if delta is None else {"content": delta})
                    return {**head, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]}
                return {**head, "choices": [{"index": 0, "text": delta or "", "logprobs": None,
                                             "finish_reason": finish}]}

            async def events() -> AsyncIterator[bytes]:
                try:
                    if chat:
                        yield _sse(chunk(None, None, first=True))
                    async for piece in pieces:
                        yield _sse(chunk(piece, None))
                except Exception as exc:  # after the headers went out: an error event, as OpenAI sends
                    msg = str(exc) if isinstance(exc, EdgekitError) else f"internal error: {type(exc).__name__}"
                    yield _sse({"error": {"message": msg, "type": "server_error", "param": None, "code": None}})
                    return
                finally:
                    await pieces.aclose()
                yield _sse(chunk(None, outcome.finish_reason))
                if job.include_usage:
                    yield _sse({**head, "choices": [], "usage": language.usage(outcome)})
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        return guarded(handler)

    async def not_found(request: Request, _exc: Exception) -> Response:
        return error(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    async def not_allowed(request: Request, _exc: Exception) -> Response:
        return error(ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    async def internal(_request: Request, exc: Exception) -> Response:
        return error(ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/completions", text_endpoint(chat=False), methods=["POST"]),
        Route("/v1/chat/completions", text_endpoint(chat=True), methods=["POST"]),
    ]
    if language is None:
        from ..solver import routes as solver_routes

        routes += solver_routes(session, worker, guarded, read_body, ApiError)
        routes.append(Route("/", lambda _r: RedirectResponse("/solver"), methods=["GET"]))
    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        worker.executor.shutdown(wait=True, cancel_futures=True)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed, 500: internal},
                    lifespan=lifespan)
    app.state.worker = worker
    app.state.model_name = name
    return app


def serve(session: Any, root: Path, config: ServerConfig = ServerConfig()) -> None:
    """Run the server until Ctrl-C.  Prints where it listens; warns when it binds beyond loopback without a key."""
    import sys

    uvicorn = require("uvicorn", "serve")
    app = create_app(session, root, config)
    if config.host not in LOOPBACK and not config.api_key:
        print(f"edgekit: warning: listening on {config.host} without --api-key: anyone who can reach this address "
              "can use the model", file=sys.stderr)
    kind = "Sudoku page at /solver" if not hasattr(session, "stream") else "OpenAI API at /v1"
    print(f"serving {app.state.model_name} ({session.engine}) on http://{config.host}:{config.port} — {kind}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
