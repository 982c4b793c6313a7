"""What every benchmark script needs: the machine and commit a result came from, and the random-weight
full-size LFM2-350M checkpoint (speed does not depend on weight values).  Scripts run as ``python bench/X.py``,
so this directory is on sys.path and they import it as ``common``."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return run("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes)" if run("status", "--porcelain") else "")


def random_350m(work: Path) -> Path:
    """LFM2-350M's architecture (bench/configs/lfm2-350m.json) with seeded random bf16 weights, and the built-in
    tokenizer padded with unused entries to the 65,536-row vocabulary, so that every id a random model samples
    decodes (ExecuTorch's runner stops on an id its tokenizer does not know).  Built once per ``work``."""
    out = work / "lfm2-350m-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from edgekit.builtin import ROOT

    cfg = json.loads((HERE / "configs" / "lfm2-350m.json").read_text())
    cfg.pop("transformers_version", None)
    torch.manual_seed(0)
    Lfm2ForCausalLM(Lfm2Config(**cfg)).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok = json.loads((ROOT / "lfm2-tiny" / "tokenizer.json").read_text())
    table = tok["model"]["vocab"]
    for i in range(max(table.values()) + 1, int(cfg["vocab_size"])):
        table[f"<unused{i}>"] = i
    (out / "tokenizer.json").write_text(json.dumps(tok))
    shutil.copy(ROOT / "lfm2-tiny" / "tokenizer_config.json", out / "tokenizer_config.json")
    return out
