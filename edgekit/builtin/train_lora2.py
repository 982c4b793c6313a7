"""Reproducible training of ``builtin:lfm2-tiny-lora2``: a second LoRA adapter for the built-in tiny LFM2, for
bundles that carry several adapters (``--lora-mode separate``).

It differs from ``lfm2-tiny-lora`` on purpose, so a bundle holding both exercises what separate adapters must get
right: another slice of the standard library (the ``http`` package, never seen by the base or the first adapter),
another rank (4 instead of 8), rsLoRA scaling (``alpha / sqrt(r)``), and fewer targets (no ``in_proj`` /
``k_proj``: the other projections' branches stay zero for it).

    python -m edgekit.builtin.train_lora2 --out edgekit/builtin     # a few minutes of CPU on 2 cores

The training record (losses before/after on held-out ``http`` files and on the base's held-out text) is written
to ``lfm2-tiny-lora2/TRAINING.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import train as base_train
from .train import eval_loss, read_files, stdlib_dir, token_stream, train_loop

TARGETS = ["q_proj", "v_proj", "out_proj", "w1", "w2", "w3"]
RANK, ALPHA = 4, 8


def main(argv: list[str] | None = None) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from transformers import Lfm2ForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256, help="tokens per training sequence")
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    base_train.SEQ_LEN = args.seq  # train_loop's window length
    base_dir = args.out / "lfm2-tiny"
    tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    files = sorted((stdlib_dir() / "http").rglob("*.py"))
    texts = read_files(files)
    n_train = max(1, int(len(texts) * 0.8))
    train = token_stream(tok, texts[:n_train])
    held = token_stream(tok, texts[n_train:])
    heldout = token_stream(tok, [(Path(__file__).parent.parent / "data" / "heldout.txt").read_text(encoding="utf-8")])
    model = Lfm2ForCausalLM.from_pretrained(str(base_dir), torch_dtype=torch.float32)
    def losses(m):  # type: ignore[no-untyped-def]
        return {"http_eval_loss": eval_loss(m, held, max_windows=8), "heldout_loss": eval_loss(m, heldout, max_windows=4)}

    before = losses(model)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, use_rslora=True, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    t0 = time.time()
    train_loop(peft_model, trainable, train, args.steps, 3e-3, args.batch, args.seed)
    seconds = time.time() - t0
    report = {
        "data": {"train_files": [p.relative_to(stdlib_dir()).as_posix() for p in files[:n_train]],
                 "eval_files": [p.relative_to(stdlib_dir()).as_posix() for p in files[n_train:]],
                 "train_tokens": int(train.numel()), "eval_tokens": int(held.numel())},
        "base": before,
        "lora": {**losses(peft_model), "steps": args.steps, "batch": args.batch, "seq_len": args.seq, "rank": RANK, "alpha": ALPHA, "use_rslora": True,
                 "targets": TARGETS, "train_seconds": round(seconds, 1), "seed": args.seed},
    }
    out = args.out / "lfm2-tiny-lora2"
    peft_model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "builtin:lfm2-tiny"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["base"]), json.dumps({k: report["lora"][k] for k in ("http_eval_loss", "heldout_loss")}))


if __name__ == "__main__":
    main()
