"""Seeded, bounded fuzzing of edgekit's inputs (issue 17): mutated configs, safetensors, tokenizer files,
adapters, bundle manifests and artifact bytes, each case run in its own forked child with a timeout.

    python tests/fuzz/runner.py --cases 40 --seed 0 [--classes config,manifest] [--json report.json]

Every case is a copy of a built-in input with one mutation whose right outcome is known:

- ``refuse``: the input is broken or does not describe these weights (wrong type, out-of-range id, a tensor
  missing, a changed artifact byte): the right outcome is a one-line ``EdgekitError``;
- ``accept``: a harmless change (JSON re-formatted, an unread key changed): it must be accepted, and a bundle must
  still generate exactly what the unmutated bundle generates;
- ``either``: a change whose effect the oracle computes (weight bytes flipped: accepted only if every value is
  still finite; a manifest leaf given another type: accepted only if the output is unchanged).

Classification: ``accepted`` (and correct), ``refused`` (clean, one line), ``false_refusal`` (a harmless input
refused: counted, not failing), and the failures ``traceback`` (an exception that is not an EdgekitError, a CLI
exit code other than 0/2, or an error of several lines), ``crash`` (the child died of a signal), ``hang``
(timeout), ``silent`` (a broken input accepted, or an accepted input whose output changed) and ``leftover``
(files left in the case's directory by a refused action).

The parent imports the heavy libraries once and forks a child per case (fork keeps each case isolated, so a
crash or hang is observed from outside, without paying torch's import per case).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FAILURES = ("traceback", "crash", "hang", "silent", "leftover")
OUTCOMES = ("accepted", "refused", "false_refusal") + FAILURES
CLASSES = ("config", "safetensors", "tokenizer", "adapter", "manifest", "artifact")
PROMPT = "def main("
RUN_TOKENS = 4


@dataclass
class Case:
    cls: str
    index: int
    what: str  # one-line description of the mutation
    expect: str  # refuse | accept | either
    action: str  # plan | plan_adapter | bundle
    fmt: str = "gguf"
    oracle: Callable[[Path], bool] | None = None  # for "either": True when accepting is right
    extra: dict[str, Any] = field(default_factory=dict)


# -- inputs -------------------------------------------------------------------------------------------------

def copy_ckpt(src: Path, dst: Path, link_weights: bool = True) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors" and link_weights:
            (dst / f.name).symlink_to(f.resolve())
        else:
            shutil.copy(f, dst / f.name)
    return dst


def load_json(p: Path) -> Any:
    return json.loads(p.read_text(encoding="utf-8"))


def save_json(p: Path, data: Any, **kw: Any) -> None:
    p.write_text(json.dumps(data, **kw), encoding="utf-8")


def bad_value(rng: random.Random, value: Any) -> Any:
    """A value of another type or out of range for ``value``."""
    choices: list[Any] = [str(value), None, [value], {"v": value}, -1, 0, 10**12, 1.5, True, "", float("nan")]
    choices = [c for c in choices if not (type(c) is type(value) and c == value)]
    return rng.choice(choices)


# -- mutations per class ------------------------------------------------------------------------------------

STRUCTURAL = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
              "conv_L_cache")


def gen_config(rng: random.Random, i: int, d: Path, base: Path) -> Case:
    ck = copy_ckpt(base, d / "ckpt")
    p = ck / "config.json"
    cfg = load_json(p)
    kind = rng.choice(["structural", "structural", "delete", "layer_swap", "rope", "bytes", "benign"])
    if kind == "structural":
        key = rng.choice(STRUCTURAL)
        if rng.random() < 0.5:
            cfg[key] = bad_value(rng, cfg[key])
        else:
            cfg[key] = cfg[key] + rng.choice([-1, 1, 2, cfg[key]])
        save_json(p, cfg)
        return Case("config", i, f"{key} = {cfg[key]!r}", "refuse", "plan")
    if kind == "delete":
        key = rng.choice(["hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads", "model_type",
                          "architectures"])
        del cfg[key]
        save_json(p, cfg)
        # model_type or architectures alone still names the family: then transformers loads the same model
        return Case("config", i, f"delete {key}", "either", "plan", oracle=_transformers_same)
    if kind == "layer_swap":
        j = rng.randrange(len(cfg["layer_types"]))
        cfg["layer_types"][j] = {"conv": "full_attention", "full_attention": "conv"}[cfg["layer_types"][j]]
        if rng.random() < 0.3:
            cfg["layer_types"] = cfg["layer_types"][: rng.randrange(len(cfg["layer_types"]))]
        save_json(p, cfg)
        return Case("config", i, f"layer_types = {cfg['layer_types']}", "refuse", "plan")
    if kind == "rope":
        cfg["rope_parameters"]["rope_theta"] = rng.choice([0, -1.0, "1e6", [1e6], float("nan"), float("inf")])
        save_json(p, cfg)
        return Case("config", i, f"rope_theta = {cfg['rope_parameters']['rope_theta']!r}", "refuse", "plan")
    if kind == "bytes":
        raw = p.read_bytes()
        how = rng.choice(["truncate", "latin1", "array", "flip"])
        if how == "truncate":
            raw = raw[: rng.randrange(1, len(raw) - 2)]
        elif how == "latin1":
            raw = raw.replace(b'"lfm2"', b'"lfm\xe92"', 1)
        elif how == "array":
            raw = b"[" + raw + b"]"
        else:
            k = rng.randrange(len(raw))
            raw = raw[:k] + bytes([rng.choice(b"{}[]:,\"")]) + raw[k + 1:]
        p.write_bytes(raw)
        # a flipped character may still parse: right to accept only if the model the config describes is the same
        if how == "flip":
            return Case("config", i, f"byte flip ({how})", "either", "plan", oracle=_transformers_same)
        return Case("config", i, f"bytes ({how})", "refuse", "plan")
    variant = rng.choice(["indent", "sorted", "comment", "version"])
    if variant == "comment":
        cfg["_comment"] = "fuzz"
    if variant == "version":
        cfg["transformers_version"] = "9.9.9"
    save_json(p, cfg, indent=rng.choice([None, 1, 4]), sort_keys=variant == "sorted")
    return Case("config", i, f"benign ({variant})", "accept", "plan")


REF_LOGITS: Path | None = None  # transformers' logits of the unmutated checkpoint (set by learn_baselines)
REF_IDS = list(range(1, 33))


def transformers_logits(ckpt: Path) -> Any:
    """The logits [1, 32, vocab] float32 of transformers' Lfm2ForCausalLM loaded from ``ckpt`` as a user would."""
    import torch
    import transformers

    model = transformers.Lfm2ForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        return model(torch.tensor([REF_IDS])).logits.numpy()


def _transformers_same(d: Path) -> bool:
    """The mutated checkpoint means the same model to transformers: it loads, and its logits equal the unmutated
    checkpoint's exactly (a renamed key whose default differs, or a missing tensor filled at random, changes
    them). Accepting is right then, and only then."""
    import numpy as np

    try:
        logits = transformers_logits(d / "ckpt")
    except Exception:  # noqa: BLE001 - transformers cannot load it: the config does not describe these weights
        return False
    ref = np.load(REF_LOGITS)
    return logits.shape == ref.shape and bool(np.array_equal(logits, ref))


def gen_safetensors(rng: random.Random, i: int, d: Path, base: Path) -> Case:
    ck = copy_ckpt(base, d / "ckpt", link_weights=False)
    p = ck / "model.safetensors"
    raw = bytearray(p.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    kind = rng.choice(["truncate", "header_len", "header_byte", "data_flip", "data_flip", "rewrite", "rewrite"])
    if kind == "truncate":
        p.write_bytes(bytes(raw[: rng.randrange(8, len(raw) - 1)]))
        return Case("safetensors", i, "truncated", "refuse", "plan")
    if kind == "header_len":
        raw[:8] = struct.pack("<Q", rng.choice([0, n - 1, n + 1, len(raw), 2**63]))
        p.write_bytes(bytes(raw))
        return Case("safetensors", i, "header length", "refuse", "plan")
    if kind == "header_byte":
        k = rng.randrange(8, 8 + n)
        old = raw[k]
        raw[k] = rng.choice(b"{}[]:,\"0123456789_xF")
        p.write_bytes(bytes(raw))
        if raw[k] == old:
            return Case("safetensors", i, "header byte (unchanged)", "accept", "plan")
        return Case("safetensors", i, f"header byte {k}", "either", "plan", oracle=lambda _d: _header_same(p, base))
    if kind == "data_flip":
        for _ in range(rng.choice([1, 4, 64])):
            k = rng.randrange(8 + n, len(raw))
            raw[k] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(raw))
        return Case("safetensors", i, "data bytes flipped", "either", "plan", oracle=lambda _d: _all_finite(p))
    how = rng.choice(["drop", "extra", "nan", "inf", "reshape", "int", "rename"])
    return Case("safetensors", i, f"rewrite ({how})", "refuse", "plan", extra={"rewrite": how, "seed": rng.random()})


def _header_same(p: Path, base: Path) -> bool:
    def header(path: Path) -> Any:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8 : 8 + n].decode("utf-8"))

    try:
        return header(p) == header(base / "model.safetensors")
    except Exception:
        return False


def _all_finite(p: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t.float()).all()) for t in load_file(str(p)).values())


def rewrite_safetensors(p: Path, how: str, seed: float) -> None:
    """Runs in the child (needs torch)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(p))
    names = sorted(tensors)
    name = names[int(seed * len(names))]
    if how == "drop":
        del tensors[name]
    elif how == "extra":
        tensors["model.layers.0.extra_scale"] = torch.ones(4)
    elif how in ("nan", "inf"):
        t = tensors[name].clone()
        t.view(-1)[int(seed * t.numel())] = float(how)
        tensors[name] = t
    elif how == "reshape":
        t = tensors[name]
        tensors[name] = t.reshape(-1)[: max(1, t.numel() - 1)].clone()
    elif how == "int":
        tensors[name] = tensors[name].float().round().to(torch.int32)
    elif how == "rename":
        tensors[name + "_x"] = tensors.pop(name)
    save_file(tensors, str(p), metadata={"format": "pt"})


def gen_tokenizer(rng: random.Random, i: int, d: Path, base: Path) -> Case:
    ck = copy_ckpt(base, d / "ckpt")
    tj = ck / "tokenizer.json"
    kind = rng.choice(["tok_bytes", "post_processor", "normalizer", "tok_config", "gen_config", "template", "benign"])
    if kind == "tok_bytes":
        raw = tj.read_bytes()
        how = rng.choice(["truncate", "invalid_utf8", "array"])
        if how == "truncate":
            raw = raw[: rng.randrange(1, len(raw) - 2)]
        elif how == "invalid_utf8":
            k = rng.randrange(len(raw))
            raw = raw[:k] + b"\xff\xfe" + raw[k:]
        else:
            raw = b"[" + raw + b"]"
        tj.write_bytes(raw)
        return Case("tokenizer", i, f"tokenizer.json {how}", "refuse", "plan")
    tok = load_json(tj)
    if kind == "post_processor":
        pp = tok["post_processor"]
        if rng.random() < 0.5:
            pp["single"][0]["SpecialToken"]["id"] = rng.choice(["<|nosuch|>", "", "A"])
        else:
            name = next(iter(pp["special_tokens"]))
            pp["special_tokens"][name]["ids"] = [rng.choice([5, 4095, 99999])]
        save_json(tj, tok)
        return Case("tokenizer", i, "post-processor names an unknown token", "refuse", "plan")
    if kind == "normalizer":
        tok["normalizer"] = {"type": rng.choice(["NFKC", "NFC", "NFD", "Lowercase"])}
        save_json(tj, tok)
        fmt = rng.choice(["gguf", "onnx"])
        return Case("tokenizer", i, f"{tok['normalizer']['type']} normalizer for {fmt}",
                    "refuse" if fmt == "gguf" else "accept", "plan", fmt=fmt)
    if kind == "tok_config":
        p = ck / "tokenizer_config.json"
        cfg = load_json(p)
        key = rng.choice(["bos_token", "eos_token", "pad_token", "extra_special_tokens"])
        cfg[key] = rng.choice([5, ["x"], "<|nosuch|>", {"content": 3}]) if key != "extra_special_tokens" else "x"
        save_json(p, cfg)
        return Case("tokenizer", i, f"tokenizer_config {key} = {cfg[key]!r}", "refuse", "plan")
    if kind == "gen_config":
        p = ck / "generation_config.json"
        cfg = load_json(p)
        key = rng.choice(["eos_token_id", "bos_token_id", "pad_token_id"])
        cfg[key] = rng.choice(["2", [2, "x"], 99999, -1, 2.5, True])
        save_json(p, cfg)
        return Case("tokenizer", i, f"generation_config {key} = {cfg[key]!r}", "refuse", "plan")
    if kind == "template":
        (ck / "chat_template.jinja").write_text(rng.choice(
            ["{% for m in messages %}{{ m.content }}", "{{ messages[0].content ", "{% if x %}a{% endfor %}",
             "{% endfor %}", "{{ x | }}"]), encoding="utf-8")  # ("{% raw %}" alone is valid: it renders "")
        return Case("tokenizer", i, "chat template syntax error", "refuse", "plan")
    save_json(tj, tok, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
    return Case("tokenizer", i, "benign (re-serialised tokenizer.json)", "accept", "plan")


def gen_adapter(rng: random.Random, i: int, d: Path, base: Path) -> Case:
    ad = copy_ckpt(base, d / "adapter", link_weights=False)
    p = ad / "adapter_config.json"
    cfg = load_json(p)
    kind = rng.choice(["r", "alpha", "rslora", "targets", "rekey", "tensor", "bytes", "benign"])
    if kind == "r":
        cfg["r"] = rng.choice([4, 16, "8", 0, -8, None])
        save_json(p, cfg)
        return Case("adapter", i, f"r = {cfg['r']!r}", "refuse", "plan_adapter")
    if kind == "alpha":
        cfg["lora_alpha"] = rng.choice([float("nan"), float("inf"), "16", None, [16]])
        save_json(p, cfg)
        return Case("adapter", i, f"lora_alpha = {cfg['lora_alpha']!r}", "refuse", "plan_adapter")
    if kind == "rslora":
        cfg["use_rslora"] = rng.choice(["false", "true", 1, None])
        save_json(p, cfg)
        return Case("adapter", i, f"use_rslora = {cfg['use_rslora']!r}", "refuse", "plan_adapter")
    if kind == "targets":
        cfg["target_modules"] = rng.choice([["nosuch"], ["q_proj"], "q_proj", [], None])
        save_json(p, cfg)
        return Case("adapter", i, f"target_modules = {cfg['target_modules']!r}", "refuse", "plan_adapter")
    if kind == "bytes":
        raw = p.read_bytes()
        p.write_bytes(raw[: rng.randrange(1, len(raw) - 2)])
        return Case("adapter", i, "adapter_config truncated", "refuse", "plan_adapter")
    if kind in ("rekey", "tensor"):
        how = "rekey" if kind == "rekey" else rng.choice(["nan", "drop", "shape", "extra"])
        return Case("adapter", i, f"adapter tensors ({how})", "refuse", "plan_adapter",
                    extra={"adapter_rewrite": how, "seed": rng.random()})
    save_json(p, cfg, indent=rng.choice([None, 4]), sort_keys=True)
    return Case("adapter", i, "benign (re-serialised config)", "accept", "plan_adapter")


def rewrite_adapter(p: Path, how: str, seed: float) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(p))
    names = sorted(tensors)
    name = names[int(seed * len(names))]
    if how == "rekey":
        tensors = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    elif how == "nan":
        t = tensors[name].clone()
        t.view(-1)[0] = float("nan")
        tensors[name] = t
    elif how == "drop":
        del tensors[name]
    elif how == "shape":
        tensors[name] = torch.cat([tensors[name], tensors[name]], dim=0)
    elif how == "extra":
        tensors["base_model.model.model.layers.0.nosuch.lora_A.weight"] = torch.zeros(8, 256)
    save_file(tensors, str(p))


READ_KEYS = ("family", "kind", "format", "engine", "plan", "source", "artifact", "model", "files")


def _leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, path + (k,))] or [path]
    if isinstance(obj, list):
        return [leaf for j, v in enumerate(obj) for leaf in _leaves(v, path + (j,))] or [path]
    return [path]


def gen_manifest(rng: random.Random, i: int, d: Path, bundle: Path) -> Case:
    b = d / "bundle"
    shutil.copytree(bundle, b)
    p = b / "edgekit.json"
    m = load_json(p)
    kind = rng.choice(["leaf", "leaf", "leaf", "delete", "ids", "bytes", "benign"])
    if kind == "leaf":
        path = rng.choice(_leaves(m))
        target = m
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = bad_value(rng, target[path[-1]])
        save_json(p, m)
        return Case("manifest", i, f"{'.'.join(map(str, path))} = {target[path[-1]]!r}", "either", "bundle")
    if kind == "delete":
        key = rng.choice(READ_KEYS)
        del m[key]
        save_json(p, m)
        return Case("manifest", i, f"delete {key}", "refuse", "bundle")
    if kind == "ids":
        key = rng.choice(["eos_ids", "bos_id", "vocab_size"])
        m["model"][key] = rng.choice([[99999], [-1], ["2"], 99999, -5, 0]) if key == "eos_ids" else rng.choice([99999, -5, "1"]) if key == "bos_id" else rng.choice([0, -1, "4096"])
        save_json(p, m)
        return Case("manifest", i, f"model.{key} = {m['model'][key]!r}", "refuse", "bundle")
    if kind == "bytes":
        raw = p.read_bytes()
        how = rng.choice(["truncate", "invalid_utf8", "empty", "deep"])
        raw = {"truncate": raw[: rng.randrange(1, len(raw) - 2)], "invalid_utf8": b"\xff" + raw, "empty": b"",
               "deep": b"[" * 200000}[how]
        p.write_bytes(raw)
        return Case("manifest", i, f"edgekit.json {how}", "refuse", "bundle")
    variant = rng.choice(["indent", "unknown_key", "export_seconds", "libraries"])
    if variant == "unknown_key":
        m["x_note"] = {"by": "fuzz"}
    elif variant == "export_seconds":
        m["export_seconds"] = rng.random() * 100
    elif variant == "libraries":
        m["libraries"] = {"torch": "0.0"}
    save_json(p, m, indent=rng.choice([None, 1, 2]), sort_keys=rng.random() < 0.5)
    return Case("manifest", i, f"benign ({variant})", "accept", "bundle")


def gen_artifact(rng: random.Random, i: int, d: Path, bundle: Path) -> Case:
    b = d / "bundle"
    shutil.copytree(bundle, b)
    m = load_json(b / "edgekit.json")
    name = rng.choice([m["artifact"]["file"]] * 3 + ["tokenizer.json"])
    p = b / name
    raw = bytearray(p.read_bytes())
    how = rng.choice(["flip", "flip", "flip", "truncate", "append", "zero_block"])
    if how == "flip":
        for _ in range(rng.choice([1, 1, 8])):
            k = rng.randrange(len(raw))
            raw[k] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif how == "append":
        raw += b"\0" * rng.choice([1, 4096])
    else:
        k = rng.randrange(len(raw))
        raw[k : k + 4096] = b"\0" * len(raw[k : k + 4096])
    if bytes(raw) == p.read_bytes():
        return Case("artifact", i, f"{name} {how} (no change)", "accept", "bundle")
    p.write_bytes(bytes(raw))
    return Case("artifact", i, f"{name} {how}", "refuse", "bundle")


# -- running a case -----------------------------------------------------------------------------------------

def plan_fingerprint(prep: Any) -> str:
    """What an accepted plan decides, without its paths: the family's typed config, every tensor's shape, the
    plan (format, quant, options) and the adapter's rank, alpha, scale kind and modules. An accepted harmless
    mutation must leave it equal to the unmutated input's."""
    plan = {k: v for k, v in prep.plan.to_dict().items() if k not in ("source", "adapter", "adapters")}
    ad = prep.adapter
    return json.dumps({
        "config": repr(prep.checkpoint.model_config),
        "shapes": sorted((k, list(v)) for k, v in prep.checkpoint.shapes.items()),
        "plan": plan,
        "adapter": None if ad is None else {**ad.summary(), "modules": sorted(ad.modules)},
    }, sort_keys=True, default=str)


def plan_key(fmt: str, adapter: bool) -> str:
    return f"{fmt}{'+adapter' if adapter else ''}"


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def child_run(case: Case, d: Path, inputs: dict[str, Path], result: Path) -> None:
    """In the forked child: finish the mutation (torch rewrites), run the action, write a JSON result."""
    out: dict[str, Any] = {}
    err = io.StringIO()
    t0 = time.monotonic()
    try:
        import torch

        # one thread per case: on 2 shared cores, torch's (and llama.cpp's) worker threads spin against the
        # other sessions' work, and a check over the tiny model's 56 tensors took 1 s instead of 0.05 s
        torch.set_num_threads(1)
        if "rewrite" in case.extra:
            rewrite_safetensors(d / "ckpt" / "model.safetensors", case.extra["rewrite"], case.extra["seed"])
        if "adapter_rewrite" in case.extra:
            rewrite_adapter(d / "adapter" / "adapter_model.safetensors", case.extra["adapter_rewrite"],
                            case.extra["seed"])
        before = snapshot(d)
        out["t_mutate"] = time.monotonic() - t0
        if case.action in ("plan", "plan_adapter"):
            from edgekit.errors import EdgekitError
            from edgekit.export import make_plan

            source = d / "ckpt" if case.action == "plan" else inputs["base"]
            adapter = d / "adapter" if case.action == "plan_adapter" else None
            quant = {"gguf": "q8_0", "onnx": "fp32"}[case.fmt]
            try:
                prep = make_plan(source, case.fmt, quant, adapter)
                out["outcome"] = "accepted"
                out["plan"] = plan_fingerprint(prep)
            except EdgekitError as exc:
                out["outcome"] = "refused" if "\n" not in str(exc) else "traceback"
                out["message"] = str(exc)[:400]
        else:
            from edgekit.cli import main

            info, run = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(info):
                rc = main(["info", str(d / "bundle")])
            if rc == 0:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(run):
                    rc = main(["run", str(d / "bundle"), "--prompt", PROMPT, "--max-tokens", str(RUN_TOKENS),
                               "--threads", "1"])
            lines = [line for line in err.getvalue().splitlines() if line.strip() and not line.startswith("[")]
            out["text"] = run.getvalue()  # the generated text: what a damaged-but-accepted bundle would change
            if rc == 0:
                out["outcome"] = "accepted"
            elif rc == 2 and len(lines) == 1 and lines[0].startswith("edgekit: error:"):
                out["outcome"] = "refused"
            else:
                out["outcome"] = "traceback"
            out["message"] = " | ".join(lines)[:400]
        out["t_action"] = time.monotonic() - t0 - out["t_mutate"]
        out["leftover"] = sorted(snapshot(d) - before)
        if case.oracle is not None:
            out["oracle"] = bool(case.oracle(d))
        out["t_child"] = time.monotonic() - t0
    except BaseException as exc:  # noqa: BLE001 - classified, not hidden
        out["outcome"] = "traceback"
        out["message"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    result.write_text(json.dumps(out))


def run_case(case: Case, d: Path, inputs: dict[str, Path], timeout_s: float) -> dict[str, Any]:
    result = d / "result.json"
    log = d / "child.log"
    pid = os.fork()
    if pid == 0:  # child
        try:
            fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            child_run(case, d, inputs, result)
        finally:
            os._exit(0)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout_s:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"outcome": "hang", "message": f"no result in {timeout_s:.0f} s"}
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        return {"outcome": "crash", "message": f"signal {os.WTERMSIG(status)} {' '.join(tail)[:200]}"}
    if not result.exists():
        return {"outcome": "crash", "message": "child exited without a result"}
    return json.loads(result.read_text())


def classify(case: Case, r: dict[str, Any], baseline: str | None, plans: dict[str, str] | None = None) -> str:
    o = r["outcome"]
    if o in ("traceback", "crash", "hang"):
        return o
    if o == "refused" and r.get("leftover"):
        return "leftover"
    right_to_accept = {"refuse": False, "accept": True}.get(case.expect)
    if case.expect == "either" and case.oracle is not None:
        right_to_accept = r.get("oracle", False)
    if o == "refused":
        return "false_refusal" if right_to_accept else "refused"
    # accepted
    if right_to_accept is False:
        return "silent"
    if case.action == "bundle" and baseline is not None and r.get("text") != baseline:
        return "silent"  # accepted, yet the bundle now generates something else
    if case.action != "bundle" and plans and r.get("plan") != plans[plan_key(case.fmt, case.action == "plan_adapter")]:
        return "silent"  # accepted, yet the plan describes another model, quant or adapter
    return "accepted"


GENERATORS = {
    "config": ("ckpt", gen_config),
    "safetensors": ("ckpt", gen_safetensors),
    "tokenizer": ("ckpt", gen_tokenizer),
    "adapter": ("adapter_src", gen_adapter),
    "manifest": ("bundle", gen_manifest),
    "artifact": ("bundle", gen_artifact),
}


def prepare(work: Path, classes: tuple[str, ...]) -> dict[str, Path]:
    from edgekit import builtin

    inputs = {"ckpt": builtin.resolve("builtin:lfm2-tiny"), "base": builtin.resolve("builtin:lfm2-tiny"),
              "adapter_src": builtin.resolve("builtin:lfm2-tiny-lora")}
    if {"manifest", "artifact"} & set(classes):
        from edgekit.export import export, make_plan

        bundle = work / "bundle"
        # exported in a child too: the parent must not start torch's thread pools before forking
        pid = os.fork()
        if pid == 0:
            try:
                export(make_plan("builtin:lfm2-tiny", "gguf", "q8_0"), bundle, verify=False, progress=lambda _m: None)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if not (bundle / "edgekit.json").exists():
            raise SystemExit("fuzz: could not export the base bundle")
        inputs["bundle"] = bundle
    return inputs


def learn_baselines(work: Path, inputs: dict[str, Path], baseline_dir: Path | None, warm: bool) -> dict[str, str]:
    """In a child, plan the unmutated inputs once per (format, adapter) and return their fingerprints (the
    oracle for accepted plan cases). With ``warm``, also import in the parent what the actions imported lazily
    (peft, transformers' model classes, jinja2, ...), so that no child pays those imports again; the parent
    only imports (no torch op runs in the parent before a fork)."""
    learnt = work / "baselines.json"
    pid = os.fork()
    if pid == 0:
        try:
            before = set(sys.modules)
            import torch

            torch.set_num_threads(1)
            from edgekit.export import make_plan

            plans = {}
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                for fmt, quant in (("gguf", "q8_0"), ("onnx", "fp32")):
                    for adapter in (None, inputs["adapter_src"]):
                        prep = make_plan(inputs["base"], fmt, quant, adapter)
                        plans[plan_key(fmt, adapter is not None)] = plan_fingerprint(prep)
                import numpy as np

                np.save(work / "ref_logits.npy", transformers_logits(inputs["base"]))
                if baseline_dir is not None:
                    from edgekit.cli import main as cli_main

                    cli_main(["info", str(baseline_dir / "bundle")])
                    cli_main(["run", str(baseline_dir / "bundle"), "--prompt", PROMPT, "--max-tokens", "1",
                              "--threads", "1"])
            learnt.write_text(json.dumps({"plans": plans, "modules": [m for m in sys.modules if m not in before]}))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    if not learnt.exists():
        raise SystemExit("fuzz: the unmutated inputs do not plan")
    data = json.loads(learnt.read_text())
    global REF_LOGITS
    REF_LOGITS = work / "ref_logits.npy"
    if warm:
        import importlib

        for name in data["modules"]:
            if name in sys.modules or name == "__main__":
                continue
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that imports only as part of another: the child will
                pass
    return data["plans"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300, help="cases per input class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--keep", action="store_true", help="keep the case directories")
    ap.add_argument("--no-warm", action="store_true", help="do not import the actions' lazy imports up front")
    ap.add_argument("--timing", action="store_true", help="print mean seconds per class and outcome")
    args = ap.parse_args(argv)
    classes = tuple(c for c in args.classes.split(",") if c)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # import what every case needs once, before forking (import only: no torch op runs in the parent)
    import edgekit.cli  # noqa: F401
    import edgekit.export  # noqa: F401
    import llama_cpp  # noqa: F401
    import safetensors.torch  # noqa: F401
    import tokenizers  # noqa: F401
    import torch  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))
    t0 = time.monotonic()
    counts = {c: {o: 0 for o in OUTCOMES} for c in classes}
    bad: list[dict[str, Any]] = []
    timing: dict[str, dict[str, float]] = {}
    try:
        inputs = prepare(work, classes)
        baseline = None
        baseline_dir = None
        if "bundle" in inputs:
            baseline_dir = work / "baseline"
            baseline_dir.mkdir()
            shutil.copytree(inputs["bundle"], baseline_dir / "bundle")
        plans = learn_baselines(work, inputs, baseline_dir, warm=not args.no_warm)
        if baseline_dir is not None:
            d = baseline_dir
            r = run_case(Case("baseline", 0, "unmutated", "accept", "bundle"), d, inputs, args.timeout)
            if r.get("outcome") != "accepted":
                raise SystemExit(f"fuzz: the unmutated bundle does not run: {r}")
            baseline = r["text"]
        for cls in classes:
            key, gen = GENERATORS[cls]
            for i in range(args.cases):
                rng = random.Random(f"{args.seed}:{cls}:{i}")
                d = work / f"{cls}-{i}"
                d.mkdir()
                tc = time.monotonic()
                case = gen(rng, i, d, inputs[key])
                tg = time.monotonic()
                r = run_case(case, d, inputs, args.timeout)
                outcome = classify(case, r, baseline, plans)
                counts[cls][outcome] += 1
                tw = timing.setdefault(f"{cls}/{outcome}", {"n": 0, "gen": 0.0, "case": 0.0, "mutate": 0.0,
                                                            "action": 0.0, "child": 0.0})
                tw["n"] += 1
                tw["gen"] += tg - tc
                tw["case"] += time.monotonic() - tg
                for k in ("mutate", "action", "child"):
                    tw[k] += r.get(f"t_{k}", 0.0)
                if outcome in FAILURES or outcome == "false_refusal":
                    bad.append({"class": cls, "index": i, "what": case.what, "outcome": outcome,
                                "message": r.get("message", "")})
                if not args.keep:
                    shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    totals = {o: sum(c[o] for c in counts.values()) for o in OUTCOMES}
    report = {"seed": args.seed, "cases_per_class": args.cases, "seconds": round(time.monotonic() - t0, 1),
              "counts": counts, "totals": totals, "failures_and_false_refusals": bad,
              "mean_seconds": {k: {m: round(v[m] / v["n"], 3) for m in v if m != "n"} | {"n": v["n"]}
                               for k, v in sorted(timing.items())}}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("seed", "cases_per_class", "seconds", "totals")}))
    for cls in classes:
        print(cls, counts[cls])
    if args.timing:
        for k, v in report["mean_seconds"].items():
            print(f"  {k:<24} n={v['n']:<4} " + " ".join(f"{m}={v[m]:.3f}" for m in v if m != "n"))
    for b in bad:
        print(f"  {b['outcome']:<13} {b['class']}[{b['index']}] {b['what']}: {b['message'][:200]}")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    rep = main()
    sys.exit(1 if any(rep["totals"][f] for f in FAILURES) else 0)
