"""OpenAI-compatible servers side by side: ``edgekit serve`` and llama-cpp-python's own ``python -m
llama_cpp.server`` on the same GGUF file, in the same run, with the same client load (DESIGN.md §8: ratios
measured side by side).

Each server runs in its own process with the same threads and context; a pool of ``--clients`` concurrent clients
sends ``--requests`` greedy ``/v1/completions`` requests (``--max-tokens`` tokens, the same prompts), once without
and once with streaming; per request the wall time from sending to the last byte (and, streaming, to the first
token event) is recorded.  Reported: requests/s, latency p50/p90/p99, generated tokens/s over the run, and whether
both servers returned the same greedy texts.  Then both get the same malformed requests, and their answers are
recorded.  The servers alternate over ``--rounds`` rounds so that drift in the machine's load hits both.

    .venv/bin/python bench/server_bench.py [--bundle DIR] [--clients 8] [--requests 200] [--rounds 2] [--write]

Needs ``edgekit[serve]`` and llama-cpp-python's server extras (``pip install 'edgekit[serve-bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from common import REPO, cpu_name, git_commit  # noqa: E402  (bench/ is on sys.path)

sys.path.insert(0, str(REPO / "tests"))
from apps_support import free_port, wait_ready  # noqa: E402

PROMPTS = ["def fib(n):", "import os\n", "class Parser:\n    def", "for i in range(", "# compute the mean\n",
           "return self.", "with open(path) as f:", "if __name__ == '__main__':"]
MODEL = "tiny"
LLAMA = "llama_cpp.server"
# llama_cpp.server's default (interrupt_requests=True) ends a streaming answer early when another request arrives;
# with it off, every answer is complete, as edgekit's are
LLAMA_NO_INTERRUPT = "llama_cpp.server --interrupt_requests False"
KINDS = ("edgekit", LLAMA_NO_INTERRUPT, LLAMA)
BAD = [
    ("invalid JSON", b"{not json", "application/json"),
    ("JSON array body", b"[1, 2]", "application/json"),
    ("max_tokens -1", json.dumps({"model": MODEL, "prompt": "a", "max_tokens": -1}).encode(), "application/json"),
    ("max_tokens 10^9", json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 10**9}).encode(), "application/json"),
    ("prompt missing", json.dumps({"model": MODEL}).encode(), "application/json"),
    ("temperature \"hot\"", json.dumps({"model": MODEL, "prompt": "a", "temperature": "hot"}).encode(),
     "application/json"),
]


@contextmanager
def server(kind: str, gguf_bundle: Path, threads: int, ctx: int) -> Iterator[str]:
    port = free_port()
    if kind == "edgekit":
        cmd = [sys.executable, "-m", "edgekit", "serve", str(gguf_bundle), "--port", str(port), "--threads",
               str(threads), "--ctx", str(ctx), "--model-name", MODEL, "--max-queue", "1000"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_bundle / "model.gguf"), "--model_alias",
               MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_threads_batch",
               str(threads), "--n_ctx", str(ctx), "--verbose", "False"]
        if kind == LLAMA_NO_INTERRUPT:
            cmd += ["--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/v1/models", proc, timeout=120)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def body(prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    # repeat_penalty / top_k are llama_cpp.server extensions (its defaults 1.1 / 40 would change greedy output);
    # edgekit ignores fields it does not know
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "repeat_penalty": 1.0, "top_k": 1}


def one(client: httpx.Client, base: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    if not stream:
        r = client.post(base + "/v1/completions", json=body(prompt, max_tokens, False))
        r.raise_for_status()
        data = r.json()
        return {"s": time.perf_counter() - t0, "text": data["choices"][0]["text"],
                "tokens": data["usage"]["completion_tokens"], "ttft": None}
    text, first, done = [], None, False
    with client.stream("POST", base + "/v1/completions", json=body(prompt, max_tokens, True)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                break
            piece = json.loads(payload)["choices"][0]["text"]
            if piece and first is None:
                first = time.perf_counter() - t0
            text.append(piece)
    assert done, "the stream ended without [DONE]"
    return {"s": time.perf_counter() - t0, "text": "".join(text), "tokens": None, "ttft": first}


def reference(base: str, max_tokens: int) -> dict[str, str]:
    """One request at a time, no streaming: each prompt's greedy text (also the warm-up)."""
    with httpx.Client(timeout=600) as client:
        return {p: one(client, base, p, max_tokens, False)["text"] for p in PROMPTS}


def load(base: str, clients: int, requests: int, max_tokens: int, stream: bool, ref: dict[str, str]) -> dict[str, Any]:
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients * 2)) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            rows = list(pool.map(lambda k: one(client, base, PROMPTS[k % len(PROMPTS)], max_tokens, stream),
                                 range(requests)))
        wall = time.perf_counter() - t0
    lat = sorted(r["s"] for r in rows)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    ttft = [r["ttft"] for r in rows if r["ttft"] is not None]
    complete = sum(rows[k]["text"] == ref[PROMPTS[k % len(PROMPTS)]] for k in range(requests))
    chars = sum(len(r["text"]) for r in rows) / sum(len(ref[PROMPTS[k % len(PROMPTS)]]) for k in range(requests))
    return {"rps": requests / wall, "p50": q[49], "p90": q[89], "p99": q[98], "wall": wall,
            "ttft_p50": statistics.median(ttft) if ttft else None, "complete": complete, "chars": chars}


def malformed(base: str) -> list[tuple[str, str, str]]:
    out = []
    with httpx.Client(timeout=60) as client:
        for name, data, ctype in BAD:
            try:
                r = client.post(base + "/v1/completions", content=data, headers={"Content-Type": ctype})
                out.append((name, str(r.status_code), r.text.replace("\n", " ")[:110]))
            except httpx.HTTPError as exc:
                out.append((name, "no answer", f"{type(exc).__name__}: {exc}"[:110]))
        # and is it still alive afterwards?
        try:
            out.append(("alive afterwards (GET /v1/models)", str(client.get(base + "/v1/models").status_code), ""))
        except httpx.HTTPError as exc:
            out.append(("alive afterwards (GET /v1/models)", "no answer", type(exc).__name__))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a GGUF bundle (default: export builtin:lfm2-tiny + LoRA, q8_0)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--single", type=int, default=50, help="requests of the one-client row")
    ap.add_argument("--max-tokens", type=int, default=32)
    # 1 thread: on a shared, loaded 2-core machine llama.cpp's per-op thread barrier with 2 threads made one
    # 32-token generation take 7.1 s instead of 0.06 s (raw llama_cpp.Llama, load average 13)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="replace the '## Server' section of bench/RESULTS.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-server-bench-"))
    bundle = args.bundle
    if bundle is None:
        from edgekit.export import export, make_plan

        bundle = export(make_plan("builtin:lfm2-tiny", "gguf", "q8_0", "builtin:lfm2-tiny-lora"), work / "q8_0",
                        progress=lambda _m: None)
    load_before = os.getloadavg()
    results: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    refs: dict[str, dict[str, str]] = {}
    bad: dict[str, list[tuple[str, str, str]]] = {}
    for rnd in range(args.rounds):
        for kind in (KINDS if rnd % 2 == 0 else KINDS[::-1]):
            with server(kind, bundle, args.threads, args.ctx) as base:
                refs[kind] = reference(base, args.max_tokens)
                for clients, stream, n in ((1, False, args.single), (args.clients, False, args.requests),
                                           (args.clients, True, args.requests)):
                    r = load(base, clients, n, args.max_tokens, stream, refs[kind])
                    results.setdefault((kind, stream, clients), []).append(r)
                    print(f"round {rnd} {kind:44s} clients={clients} stream={stream!s:5s} {r['rps']:7.2f} req/s  p50 "
                          f"{r['p50']*1e3:7.1f} p90 {r['p90']*1e3:7.1f} p99 {r['p99']*1e3:7.1f} ms  complete "
                          f"{r['complete']}/{n}", file=sys.stderr, flush=True)
                if rnd == 0 and kind != LLAMA_NO_INTERRUPT:
                    bad[kind] = malformed(base)
    load_after = os.getloadavg()
    same = sum(refs["edgekit"][p] == refs[LLAMA][p] for p in PROMPTS)
    lines = [
        "## Server",
        "",
        f"### edgekit serve vs llama_cpp.server — same GGUF ({bundle.name}: builtin:lfm2-tiny + LoRA), "
        f"{args.threads} threads each",
        "",
        f"`.venv/bin/python bench/server_bench.py --rounds {args.rounds}` — {cpu_name()}, {os.cpu_count()} cores, commit {git_commit()}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (1 min). {args.clients} concurrent "
        f"clients ({args.single} requests one at a time in the 1-client row), {args.requests} greedy `/v1/completions` requests per row, {args.max_tokens} tokens at most, "
        f"{len(PROMPTS)} prompts in turn; latency = send to last byte; {args.rounds} rounds, servers alternating; "
        "the row is the median of the rounds' figures.",
        "",
        "| server | clients | stream | req/s | p50 ms | p90 ms | p99 ms | TTFT p50 ms | complete answers | text returned | "
        "rounds' req/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    for clients, stream, n in ((1, False, args.single), (args.clients, False, args.requests),
                               (args.clients, True, args.requests)):
        for kind in KINDS:
            rows = results[(kind, stream, clients)]
            ttft = [r["ttft_p50"] for r in rows if r["ttft_p50"] is not None]
            lines.append(
                f"| {kind} | {clients} | {'yes' if stream else 'no'} | {med(rows, 'rps'):.2f} | {med(rows, 'p50') * 1e3:.1f} | "
                f"{med(rows, 'p90') * 1e3:.1f} | {med(rows, 'p99') * 1e3:.1f} | "
                + (f"{statistics.median(ttft) * 1e3:.1f}" if ttft else "-")
                + f" | {sum(r['complete'] for r in rows)}/{len(rows) * n}"
                + f" | {100 * min(r['chars'] for r in rows):.0f} %"
                + " | " + ", ".join(f"{r['rps']:.2f}" for r in rows) + " |")
    rat = lambda stream, c: (med(results[("edgekit", stream, c)], "rps")  # noqa: E731
                             / med(results[(LLAMA_NO_INTERRUPT, stream, c)], "rps"))
    ratio1, ratio, ratio_s = rat(False, 1), rat(False, args.clients), rat(True, args.clients)
    lines += [
        "",
        f"edgekit / llama_cpp.server (complete answers, `--interrupt_requests False`) requests/s: {ratio1:.2f}x "
        f"one client at a time, {ratio:.2f}x with {args.clients} clients without streaming, {ratio_s:.2f}x streaming. "
        "A complete answer is the same text as that server's own "
        "single-client greedy answer to the prompt; text returned = characters received / characters of the "
        f"complete answers (lowest round). Greedy single-client texts identical between edgekit and llama_cpp.server: "
        f"{same}/{len(PROMPTS)} prompts.",
        "",
        "Malformed requests (`POST /v1/completions`):",
        "",
        "| request | edgekit | llama_cpp.server |",
        "|---|---|---|",
    ]
    for (name, s1, b1), (_n, s2, b2) in zip(bad["edgekit"], bad[LLAMA]):
        cell = lambda s, b: f"{s} `{b}`" if b else str(s)  # noqa: E731
        lines.append(f"| {name} | {cell(s1, b1.replace('|', '/'))} | {cell(s2, b2.replace('|', '/'))} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        path = REPO / "bench" / "RESULTS.md"
        text = path.read_text()
        start = text.find("\n## Server\n")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            text = text[:start + 1] + section + (text[end:] if end >= 0 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        path.write_text(text)


if __name__ == "__main__":
    main()
