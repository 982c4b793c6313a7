"""Reproducible quantisation-aware training of the built-in tiny BitNet b1.58 and its LoRA adapter.

    python -m edgekit.builtin.train_bitnet --out edgekit/builtin        # <= ~45 min on 2 shared CPU cores

Same offline corpus, split and tokenizer as the built-in LFM2 (``edgekit.builtin.train``; the tokenizer is
``lfm2-tiny/tokenizer.json``), so held-out losses of the two built-ins compare directly.

The model is transformers' ``BitNetForCausalLM`` whose seven projections per layer run the BitNet b1.58 forward
with the straight-through estimator (Ma et al., arXiv 2402.17764; STE: Bengio et al., arXiv 1308.3432): on every
step the float master weights are ternarised with the absmean rule and the inputs quantised to 8 bits per token
(absmax), and the gradient passes through both roundings unchanged.  This is transformers' own ``AutoBitLinear``
in ``online`` mode, so the saved master weights load back into transformers with
``quantization_config = {quant_method: bitnet, linear_class: autobitlinear, quantization_mode: online}``.

Sizes: hidden 256 and FFN 768 (multiples of 256, the row width of llama.cpp's TQ1_0/TQ2_0 blocks), 4 layers,
4 heads / 2 KV heads, vocab 4096, tied embeddings.  ``hidden_act`` is SiLU, not the 2B-4T model's squared ReLU:
llama.cpp's ``bitnet`` graph hard-codes SiLU, and the built-in exists to verify every engine, llama.cpp included.
The shipped checkpoint holds the master weights in bf16 (what is evaluated is what is shipped).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .train import SEQ_LEN, batches, corpus_files, eval_loss, read_files, token_stream

HIDDEN = 256
FFN = 768
LAYERS = 4
HEADS = 4
KV_HEADS = 2
QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENIZER_SOURCE = "lfm2-tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class STEBitLinear(torch.nn.Linear):
    """W1.58A8 linear layer for training: the forward of transformers' ``AutoBitLinear`` (online), STE backward.

    Weight: ``inv = 1 / max(mean|W|, 1e-5)``, ``W_q = clamp(round(W * inv), -1, 1) / inv``.
    Input: ``s = 127 / max(max_j |x_j|, 1e-5)`` per token, ``x_q = clamp(round(x * s), -128, 127) / s``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        inv = 1.0 / w.abs().mean().clamp(min=1e-5)
        w_q = w + ((w * inv).round().clamp(-1, 1) / inv - w).detach()
        s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        x_q = x + ((x * s).round().clamp(-128, 127) / s - x).detach()
        return F.linear(x_q, w_q, self.bias)


def make_config(tok):
    from transformers import BitNetConfig

    return BitNetConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
        pad_token_id=tok.token_to_id("<|pad|>"),
        bos_token_id=tok.token_to_id("<|startoftext|>"),
        eos_token_id=tok.token_to_id("<|endoftext|>"),
        architectures=["BitNetForCausalLM"],
    )


def to_qat(model) -> None:
    """Switch every decoder projection (not the tied lm_head) to the STE BitLinear, in place, keeping weights."""
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and name.rsplit(".", 1)[-1] in LORA_TARGETS:
            module.__class__ = STEBitLinear


def train_budgeted(model, params, stream, max_steps: int, minutes: float, lr: float, batch: int, seed: int) -> int:
    """AdamW with warm-up and a cosine decay over ``max(step / max_steps, elapsed / budget)``; stops at whichever
    of the two ends first and returns the steps taken.  The time budget exists because the machines this is run on
    are shared: a fixed step count can take 4x longer on a busy day.  ``minutes=0`` disables it (fixed steps,
    bit-reproducible); the steps taken are recorded in TRAINING_BITNET.json either way."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, min(20, max_steps // 20))
    budget = minutes * 60 if minutes > 0 else math.inf
    it = batches(stream, batch, SEQ_LEN, gen)
    t0 = time.time()
    model.train()
    step = 0
    while step < max_steps:
        progress = max(step / max_steps, (time.time() - t0) / budget)
        if progress >= 1.0:
            break
        step += 1
        scale = step / warmup if step <= warmup else 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        x = next(it)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step}/{max_steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    return step


def save_base(model, tok_dir: Path, out_dir: Path) -> None:
    """Write the bf16 master weights as a Hugging Face BitNet checkpoint that transformers loads as-is."""
    import shutil

    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float32)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = dict(QUANTIZATION_CONFIG)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, out_dir / name)


def main(argv: list[str] | None = None) -> None:
    from tokenizers import Tokenizer
    from transformers import BitNetForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lora-steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=32.0, help="wall-clock budget of the base run (0: none)")
    ap.add_argument("--lora-minutes", type=float, default=6.0, help="wall-clock budget of the LoRA run (0: none)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()
    tok_dir = Path(__file__).parent / TOKENIZER_SOURCE
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    top, email, heldout = corpus_files()
    base_texts, email_texts = read_files(top), read_files(email)
    base_stream = token_stream(tok, base_texts)
    n_email_train = int(len(email_texts) * 0.9)
    email_train = token_stream(tok, email_texts[:n_email_train])
    email_eval = token_stream(tok, email_texts[n_email_train:])
    heldout_stream = token_stream(tok, ["\n\n".join(read_files(heldout))])

    model = BitNetForCausalLM(make_config(tok))
    to_qat(model)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)

    t0 = time.time()
    steps = train_budgeted(
        model, list(model.parameters()), base_stream, args.steps, args.minutes, args.lr, args.batch, args.seed
    )
    base_seconds = time.time() - t0
    # Ship bf16 master weights and evaluate exactly those (their ternarisation is the model).
    model = model.to(torch.bfloat16).to(torch.float32)
    report = {
        "base": {
            "heldout_loss": eval_loss(model, heldout_stream),
            "email_eval_loss": eval_loss(model, email_eval),
            "steps": steps,
            "max_steps": args.steps,
            "batch": args.batch,
            "seq_len": SEQ_LEN,
            "tokens_seen": steps * args.batch * SEQ_LEN,
            "lr": args.lr,
            "seconds": round(base_seconds, 1),
            "hidden_act": "silu",
            "weights": "W1.58 (absmean ternary), A8 per-token absmax, straight-through estimator",
        }
    }
    lfm2 = Path(__file__).parent / "TRAINING.json"
    if lfm2.is_file():
        report["lfm2_tiny_heldout_loss"] = json.loads(lfm2.read_text())["base"]["heldout_loss"]
    print(json.dumps(report), flush=True)
    base_dir = args.out / "bitnet-tiny"
    save_base(model, tok_dir, base_dir)

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    t0 = time.time()
    lora_steps = train_budgeted(
        peft_model, trainable, email_train, args.lora_steps, args.lora_minutes, 2e-3, args.batch, args.seed + 1
    )
    report["lora"] = {
        "email_eval_loss": eval_loss(peft_model, email_eval),
        "heldout_loss": eval_loss(peft_model, heldout_stream),
        "steps": lora_steps,
        "max_steps": args.lora_steps,
        "rank": lora.r,
        "alpha": lora.lora_alpha,
        "seconds": round(time.time() - t0, 1),
    }
    lora_dir = args.out / "bitnet-tiny-lora"
    peft_model.save_pretrained(lora_dir, safe_serialization=True)
    (lora_dir / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    cfg_path = lora_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "builtin:bitnet-tiny"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    report["total_seconds"] = round(time.time() - t_start, 1)
    (args.out / "TRAINING_BITNET.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
