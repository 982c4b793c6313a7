"""Tokenizer -> GGUF vocabulary, including the llama.cpp pre-tokenizer name.

llama.cpp's own converter picks the pre-tokenizer by a checksum of how a tokenizer splits a probe text, which
fails for every tokenizer it has not seen (such as a user's freshly trained one).  Here the choice is derived
from what the tokenizer *is*: the split regexes in ``tokenizer.json`` are compared with the regexes llama.cpp
implements for each pre-tokenizer type.  An unknown regex is an error unless the user names the type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import CheckpointError, UnsupportedError

# The GPT-2 split regex, which the `tokenizers` ByteLevel pre-tokenizer applies when use_regex is true.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# split regexes (in order) -> llama.cpp `tokenizer.ggml.pre` value implementing the same split
PRETOKENIZERS: dict[tuple[str, ...], str] = {
    (GPT2,): "gpt-2",
    (LLAMA3,): "llama-bpe",
    (QWEN2,): "qwen2",
}
KNOWN_NAMES = ("gpt-2", "llama-bpe", "qwen2", "default")
# every ``tokenizer.ggml.pre`` value the pinned llama.cpp (llama-cpp-python 0.3.36) accepts for a BPE vocabulary:
# any other name makes it refuse the file at load ("unknown pre-tokenizer type"), so ``--pretokenizer`` is checked
# against this list when the export is planned (tests/test_plan_time_checks.py finds each name in the
# installed libllama, so an upgrade that drops one fails there)
LLAMA_CPP_PRETOKENIZERS = (
    "default", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
    "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "mpt", "starcoder", "gpt-2", "phi-2", "jina-es",
    "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "jina-v1-en", "jina-v2-code",
    "roberta-bpe", "refact", "command-r", "qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "olmo", "dbrx",
    "smaug-bpe", "poro-chat", "glm4", "chatglm-bpe", "viking", "jais", "tekken", "smollm", "codeshell", "bloom",
    "gpt3-finnish", "exaone", "exaone4", "chameleon", "minerva-7b", "megrez", "gpt-4o", "llama4", "superbpe",
    "trillion", "granite-docling", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan",
    "hunyuan-dense", "kimi-k2", "grok-2", "afmoe", "minimax-m2",
)


def check_pretokenizer_name(name: str) -> None:
    """UnsupportedError when llama.cpp would refuse ``--pretokenizer NAME`` at load."""
    if name not in LLAMA_CPP_PRETOKENIZERS:
        close = [n for n in LLAMA_CPP_PRETOKENIZERS if n.split("-")[0] == name.split("-")[0]][:5]
        raise UnsupportedError(
            f"gguf --pretokenizer {name!r} is not a pre-tokenizer llama.cpp knows (it would refuse the file at "
            f"load); e.g. {', '.join(close or KNOWN_NAMES)} (all: edgekit.exporters.gguf.vocab.LLAMA_CPP_PRETOKENIZERS)"
        )


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    pretokenizer: str
    padded: int  # ids with no token in the tokenizer, filled with placeholders


def split_regexes(tokenizer: dict[str, Any]) -> tuple[str, ...]:
    """The regexes a byte-level BPE tokenizer splits on, in order; raises for anything llama.cpp cannot mirror."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes: list[str] = []
    byte_level = False
    for step in steps:
        kind = step.get("type")
        if kind == "Split" and "Regex" in (step.get("pattern") or {}) and not step.get("invert", False):
            regexes.append(step["pattern"]["Regex"])
        elif kind == "ByteLevel":
            byte_level = True
            if step.get("add_prefix_space"):
                raise UnsupportedError("tokenizer: ByteLevel add_prefix_space=true has no llama.cpp equivalent")
            if step.get("use_regex", True):
                regexes.append(GPT2)
        else:
            raise UnsupportedError(f"tokenizer: pre-tokenizer step {kind!r} has no llama.cpp equivalent; pass --pretokenizer")
    if not byte_level:
        raise UnsupportedError("tokenizer: only byte-level BPE tokenizers are supported for GGUF")
    return tuple(regexes)


def pretokenizer_name(tokenizer: dict[str, Any], aliases: Mapping[str, str], override: str | None = None) -> str:
    """llama.cpp's pre-tokenizer name; ``aliases`` maps a generic name to the family's own name for the same
    split (llama.cpp also sets that family's BPE options by it)."""
    if override:
        return override
    regexes = split_regexes(tokenizer)
    name = PRETOKENIZERS.get(regexes)
    if name is None:
        raise UnsupportedError(
            f"tokenizer: split regex {regexes!r} matches no llama.cpp pre-tokenizer edgekit knows; "
            f"name one with --pretokenizer (e.g. {', '.join(KNOWN_NAMES)})"
        )
    return aliases.get(name, name)


def build_vocab(
    tokenizer_path: Path, n_vocab: int, aliases: Mapping[str, str], override: str | None = None
) -> Vocab:
    import gguf

    try:
        tokenizer = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{tokenizer_path}: cannot read tokenizer ({exc})") from None
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{tokenizer_path}: tokenizer model {model.get('type')!r}; GGUF export supports BPE")
    pre = pretokenizer_name(tokenizer, aliases, override)
    tokens: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in tokenizer.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        tokens[added["id"]] = (added["content"], kind)
    if max(tokens) >= n_vocab:
        raise CheckpointError(f"{tokenizer_path}: token id {max(tokens)} >= the model's {n_vocab} embedding rows")
    out_tokens, out_types, padded = [], [], 0
    for i in range(n_vocab):
        if i in tokens:
            text, kind = tokens[i]
        else:  # embedding rows beyond the tokenizer (vocab padded for speed)
            text, kind, padded = f"[PAD{i}]", gguf.TokenType.UNUSED, padded + 1
        out_tokens.append(text)
        out_types.append(int(kind))
    return Vocab(tokens=out_tokens, types=out_types, pretokenizer=pre, padded=padded)


def add_to_writer(
    writer: Any, checkpoint_dir: Path, vocab: Vocab, bos: int | None, eos: Sequence[int], pad: int | None
) -> None:
    """Vocabulary, merges, special ids (the config's ``bos``/``eos``/``pad`` where the tokenizer files name none),
    add-bos flag and chat template."""
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pretokenizer)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    special = gguf.SpecialVocab(checkpoint_dir, load_merges=True, n_vocab=len(vocab.tokens))
    if not special.merges:
        raise CheckpointError(f"{checkpoint_dir}: tokenizer.json has no BPE merges")
    # Fall back to the config's ids where the tokenizer files do not name them.
    for kind, value in (("bos", bos), ("pad", pad), ("eos", eos[0] if eos else None)):
        if kind not in special.special_token_ids and value is not None:
            special.special_token_ids[kind] = int(value)
    special.add_to_gguf(writer, quiet=True)
