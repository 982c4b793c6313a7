"""apps/server (``edgekit serve``) with the real ``openai`` client on the built-in LFM2 GGUF bundle: the three
routes with and without streaming, sampling parameters, stop strings, usage, bad input with OpenAI-shaped errors,
the API key, the bounded queue (429), a client that leaves mid-stream, and a bounded load test."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from apps_support import edgekit_server  # noqa: E402

PROMPTS = ["def fib(n):", "import os\n", "class Parser:\n    def", "for i in range(", "# compute the mean\n",
           "return self.", "with open(path) as f:", "if __name__ == '__main__':"]


@pytest.fixture(scope="module")
def bundle(lfm2_gguf) -> Path:
    return lfm2_gguf


@pytest.fixture(scope="module")
def server(bundle):
    with edgekit_server(bundle, "--model-name", "tiny") as base:
        yield base


@pytest.fixture()
def client(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield c
    c.close()


def health(base: str) -> dict:
    return httpx.get(base + "/health").json()["queue"]


def test_models_lists_the_bundle(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_greedy_equals_edgekit_run(client, bundle):
    from edgekit import load
    from edgekit.runtimes import SamplingParams

    r = client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=24, temperature=0)
    s = load(bundle, n_threads=1)
    try:
        ids = s.tokenize("def fib(n):")
        want = s.generate(ids, SamplingParams(max_tokens=24, temperature=0))
    finally:
        s.close()
    assert r.choices[0].text == want.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want.tokens)
    assert r.usage.total_tokens == len(ids) + len(want.tokens)
    assert r.choices[0].finish_reason == ("length" if len(want.tokens) == 24 else "stop")
    assert r.object == "text_completion" and r.model == "tiny"


def test_streaming_completion_concatenates_to_the_same_text(client):
    whole = client.completions.create(model="tiny", prompt="import os\n", max_tokens=32, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="import os\n", max_tokens=32, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text and len(chunks) > 3
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat_completion_uses_the_chat_template_and_streams(client, bundle):
    from edgekit import load
    from edgekit.apps.textgen import ChatTemplate
    from edgekit.runtimes import SamplingParams

    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    s = load(bundle, n_threads=1)
    try:
        prompt = ChatTemplate.from_bundle(bundle, s.manifest).render(messages)
        assert prompt.startswith("<|startoftext|><|im_start|>system\nYou write Python.<|im_end|>\n")
        ids = s.tokenize(prompt, add_special=False)
        want = s.generate(ids, SamplingParams(max_tokens=20, temperature=0))
    finally:
        s.close()
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.role == "assistant"
    assert want.text.startswith(r.choices[0].message.content)  # equal unless the model ended its turn first
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_sampling_is_seeded_and_temperature_matters(client):
    kw = dict(model="tiny", prompt="def parse(", max_tokens=24, temperature=1.2, top_p=0.9)
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1


def test_stop_strings_cut_the_text(client):
    full = client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=40, temperature=0)
    text = full.choices[0].text
    stop = text.strip()[3:6]  # something the greedy answer contains after its start
    cut = client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=40, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut.choices[0].text


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "tiny"}).encode(), 400, "prompt"),
        (json.dumps({"model": "gpt-4", "prompt": "a"}).encode(), 404, "model"),
        (json.dumps({"model": "tiny", "prompt": "a", "max_tokens": -3}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "a", "max_tokens": 10**9}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "a", "max_tokens": "5"}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "a", "temperature": 9}).encode(), 400, "temperature"),
        (json.dumps({"model": "tiny", "prompt": "a", "top_p": 0}).encode(), 400, "top_p"),
        (json.dumps({"model": "tiny", "prompt": "a", "n": 2}).encode(), 400, "n"),
        (json.dumps({"model": "tiny", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}).encode(), 400, "stop"),
        (json.dumps({"model": "tiny", "prompt": ""}).encode(), 400, "prompt"),
        (json.dumps({"model": "tiny", "prompt": [1, 10**7]}).encode(), 400, "prompt"),
    ],
)
def test_malformed_completion_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(server + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param:
        assert err["param"] == param or err["param"].startswith(param)


def test_malformed_chat_requests(server):
    for body in ({"model": "tiny", "messages": []}, {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
                 {"model": "tiny", "messages": "hi"}):
        r = httpx.post(server + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="a", max_tokens=100_000)


def test_oversized_body_is_refused(server):
    r = httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": "x" * (2 << 20)})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_unknown_route_and_method(server):
    assert httpx.get(server + "/v2/anything").status_code == 404
    assert httpx.get(server + "/v1/completions").json()["error"]["message"].startswith("GET is not allowed")


def test_api_key(bundle):
    with edgekit_server(bundle, "--api-key", "s3cret", "--model-name", "tiny") as base:
        good = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        assert good.completions.create(model="tiny", prompt="a", max_tokens=2).usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "a"}).status_code == 401
        assert httpx.get(base + "/health").status_code == 200  # liveness needs no key


LONG = {"model": "tiny", "prompt": "def f():", "max_tokens": 3000, "ignore_eos": True, "stream": True,
        "temperature": 0}


def _open_stream(base: str, wait: bool = True) -> socket.socket:
    """A raw streaming request that reads the headers and first event (``wait``), then leaves the socket open."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    body = json.dumps(LONG).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    if not wait:
        return s
    while b"data:" not in got:
        got += s.recv(4096)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    return s


def test_disconnect_mid_stream_frees_the_session(server):
    before = health(server)
    s = _open_stream(server)
    s.close()
    deadline = time.monotonic() + 20
    while health(server)["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = health(server)
    assert after["pending"] == 0 and after["cancelled"] == before["cancelled"] + 1
    # and the session serves the next request
    assert httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3}).status_code == 200


def test_full_queue_answers_429_at_once(bundle):
    with edgekit_server(bundle, "--max-queue", "2", "--model-name", "tiny") as base:
        held = [_open_stream(base), _open_stream(base, wait=False)]  # one generating, one waiting
        try:
            deadline = time.monotonic() + 10
            while health(base)["pending"] < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            t = time.perf_counter()
            r = httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2})
            took = time.perf_counter() - t
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            assert took < 2.0
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).completions.create(
                    model="tiny", prompt="a", max_tokens=2)
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 20
        while health(base)["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2}).status_code == 200


def test_load_8_clients_200_requests_all_complete_and_identical(server):
    """Bounded load: 8 concurrent clients, 200 requests (half streaming), temperature 0: every answer equals the
    single-client one, nothing is lost, the queue drains."""
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=120)
    want = {p: client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0) for p in PROMPTS}

    def one(k: int) -> tuple[str, str, str | None, int]:
        p = PROMPTS[k % len(PROMPTS)]
        if k % 2:
            chunks = list(client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            return p, text, finish, chunks[-1].usage.completion_tokens
        r = client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0)
        return p, r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200
    for p, text, finish, n in results:
        w = want[p]
        assert (text, finish, n) == (w.choices[0].text, w.choices[0].finish_reason, w.usage.completion_tokens), p
    q = health(server)
    assert q["pending"] == 0


@pytest.mark.slow  # ~30 s alone (CI time); the GGUF server tests stay in the default run
def test_an_onnx_bundle_serves_the_same_api(export_cache):
    """The server is engine-agnostic: an ONNX bundle of the same model answers greedy requests identically."""
    from conftest import exported

    onnx = exported(export_cache, "builtin:lfm2-tiny", "onnx", "fp32", adapter="builtin:lfm2-tiny-lora")
    with edgekit_server(onnx, "--model-name", "tiny") as base:
        c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
        r = c.completions.create(model="tiny", prompt="def fib(n):", max_tokens=12, temperature=0)
        assert r.usage.completion_tokens == 12
        chunks = list(c.completions.create(model="tiny", prompt="def fib(n):", max_tokens=12, temperature=0,
                                           stream=True))
        assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
        chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert chat.choices[0].message.role == "assistant"
