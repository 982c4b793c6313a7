"""Reproducible training of the built-in tiny LFM2 and its LoRA adapter.

The built-in checkpoints exist so that the export, verification and quality checks run offline: no model hub
is reachable where edgekit is developed and tested.  Quantisation quality can only be judged on a *trained*
model, so this script trains a real LFM2 (conv and attention layers, tied embeddings) on text every Python
installation has: the standard library's own source.

    python -m edgekit.builtin.train --out edgekit/builtin            # ~30 min on 2 CPU cores

Another shape, base model only (the second trained model of bench/RESULTS.md, "Calibrated 4-bit quantisation"):

    python -m edgekit.builtin.train --out /tmp/second --data-out /tmp/second/data --lora-steps 0 --steps 500 \
        --hidden-size 384 --intermediate-size 1152 --heads 6 --kv-heads 2 \
        --layer-types full_attention,conv,conv,full_attention,conv

Data split (by file, deterministic):
  * base model:  the top-level ``*.py`` modules of the standard library, minus the held-out ones;
  * LoRA:        the ``email`` package (a distinct slice; its loss must drop with the adapter);
  * held-out:    ``HELDOUT_MODULES`` — never trained on; written to ``edgekit/data/heldout.txt`` and used by
                 ``edgekit verify`` for the teacher-forced parity check.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sysconfig
import time
from pathlib import Path

HELDOUT_MODULES = ("textwrap.py", "colorsys.py", "fnmatch.py", "bisect.py", "shlex.py")
SPECIAL_TOKENS = ("<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 4096
SEQ_LEN = 512
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_files(paths: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def corpus_files() -> tuple[list[Path], list[Path], list[Path]]:
    lib = stdlib_dir()
    top = sorted(p for p in lib.glob("*.py") if p.name not in HELDOUT_MODULES)
    email = sorted((lib / "email").rglob("*.py"))
    heldout = [lib / name for name in HELDOUT_MODULES]
    return top, email, heldout


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # Plain GPT-2 style byte-level pre-tokenisation: llama.cpp implements the same regex ("gpt-2").
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


BUILTIN_LAYERS = ("conv", "conv", "full_attention", "conv", "full_attention", "conv")


def make_config(tok, hidden: int = 256, intermediate: int = 768, heads: int = 4, kv_heads: int = 2,
                layer_types: tuple[str, ...] = BUILTIN_LAYERS):
    """The built-in's shape by default; the other arguments train a model of another shape (bench/RESULTS.md
    measures quantisation schemes on one)."""
    from transformers import Lfm2Config

    return Lfm2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        # LFM2 auto-adjusts the feed-forward size: int(2 * 768 / 3) = 512, already a multiple of 256.
        intermediate_size=intermediate,
        block_auto_adjust_ff_dim=True,
        block_multiple_of=256,
        block_ffn_dim_multiplier=1.0,
        num_hidden_layers=len(layer_types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        layer_types=list(layer_types),
        max_position_embeddings=4096,
        conv_L_cache=3,
        tie_word_embeddings=True,
        pad_token_id=tok.token_to_id("<|pad|>"),
        bos_token_id=tok.token_to_id("<|startoftext|>"),
        eos_token_id=tok.token_to_id("<|endoftext|>"),
        architectures=["Lfm2ForCausalLM"],
    )


def token_stream(tok, texts: list[str]) -> "torch.Tensor":
    import torch

    eos = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)  # starts with bos from the post-processor
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def batches(stream, batch: int, seq: int, gen):
    import torch

    n = stream.numel() - seq - 1
    while True:
        starts = torch.randint(0, n, (batch,), generator=gen)
        yield torch.stack([stream[s : s + seq + 1] for s in starts.tolist()])


def eval_loss(model, stream, seq: int = SEQ_LEN, max_windows: int = 16) -> float:
    import torch

    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(0, min(stream.numel() - 1, max_windows * seq), seq):
            chunk = stream[i : i + seq + 1].unsqueeze(0)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits[0]
            losses.append(torch.nn.functional.cross_entropy(logits, chunk[0, 1:]).item())
    model.train()
    return sum(losses) / len(losses)


def train_loop(model, params, stream, steps: int, lr: float, batch: int, seed: int, log_every: int = 25) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    it = batches(stream, batch, SEQ_LEN, gen)
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        scale = step / warmup if step <= warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        x = next(it)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0 or step == 1:
            print(f"step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import Lfm2ForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--data-out", type=Path, default=Path(__file__).parent.parent / "data")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lora-steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden-size", type=int, default=256, help="another shape: hidden width")
    ap.add_argument("--intermediate-size", type=int, default=768, help="another shape: FFN width before LFM2's auto-adjust")
    ap.add_argument("--heads", type=int, default=4, help="another shape: attention heads")
    ap.add_argument("--kv-heads", type=int, default=2, help="another shape: KV heads")
    ap.add_argument("--layer-types", default=",".join(BUILTIN_LAYERS), help="another shape: conv / full_attention, comma-separated")
    args = ap.parse_args(argv)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    top, email, heldout = corpus_files()
    base_texts, email_texts = read_files(top), read_files(email)

    tok = train_tokenizer(base_texts + email_texts)
    config = make_config(tok, args.hidden_size, args.intermediate_size, args.heads, args.kv_heads,
                         tuple(args.layer_types.split(",")))
    model = Lfm2ForCausalLM(config)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)

    base_stream = token_stream(tok, base_texts)
    n_email_train = int(len(email_texts) * 0.9)
    email_train = token_stream(tok, email_texts[:n_email_train])
    email_eval = token_stream(tok, email_texts[n_email_train:])
    heldout_text = "\n\n".join(read_files(heldout))
    heldout_stream = token_stream(tok, [heldout_text])
    print(f"tokens: base {base_stream.numel()}, email train {email_train.numel()}, held-out {heldout_stream.numel()}")

    train_loop(model, list(model.parameters()), base_stream, args.steps, 3e-3, args.batch, args.seed)
    # The shipped checkpoint is bf16 (as real LFM2 releases are); evaluate what is shipped.
    model = model.to(torch.bfloat16).to(torch.float32)
    report = {
        "base": {
            "heldout_loss": eval_loss(model, heldout_stream),
            "email_eval_loss": eval_loss(model, email_eval),
            "steps": args.steps,
            "batch": args.batch,
            "seq_len": SEQ_LEN,
        }
    }
    print(json.dumps(report), flush=True)

    base_dir = args.out / "lfm2-tiny"
    if args.lora_steps == 0:  # a base model only (another shape for a benchmark): no adapter, no data files
        report["base"]["shape"] = {"hidden": args.hidden_size, "intermediate": args.intermediate_size,
                                   "heads": args.heads, "kv_heads": args.kv_heads, "layer_types": args.layer_types}
        model.to(torch.bfloat16).save_pretrained(base_dir, safe_serialization=True)
        _save_tokenizer(tok, base_dir)
        (args.out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
        return
    model.to(torch.bfloat16).save_pretrained(base_dir, safe_serialization=True)
    model = model.to(torch.float32)
    _save_tokenizer(tok, base_dir)

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    train_loop(peft_model, trainable, email_train, args.lora_steps, 2e-3, args.batch, args.seed + 1)
    report["lora"] = {
        "email_eval_loss": eval_loss(peft_model, email_eval),
        "heldout_loss": eval_loss(peft_model, heldout_stream),
        "steps": args.lora_steps,
        "rank": lora.r,
        "alpha": lora.lora_alpha,
    }
    lora_dir = args.out / "lfm2-tiny-lora"
    peft_model.save_pretrained(lora_dir, safe_serialization=True)
    (lora_dir / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    cfg_path = lora_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "builtin:lfm2-tiny"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    args.data_out.mkdir(parents=True, exist_ok=True)
    (args.data_out / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    (args.out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _save_tokenizer(tok, base_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(base_dir)


if __name__ == "__main__":
    main()
