"""Plan-time checks of a language checkpoint's tokenizer files, for what the engines would otherwise get wrong
silently or crash on (issue 17, kinds 3 and 5).

- ``tokenizer.json`` must be UTF-8 JSON whose post-processor names only special tokens it defines (a
  ``TemplateProcessing`` that names an unknown token makes `tokenizers` panic — a ``PanicException`` that is
  not an ``Exception`` — on every encode with special tokens);
- a normalizer (NFKC, NFC, Lowercase, ...) is applied by `tokenizers` (ONNX, ExecuTorch sessions) but not by
  llama.cpp's BPE tokenizer, which would tokenize "½" or a decomposed "é" differently: GGUF refuses it;
- ``tokenizer_config.json`` and ``special_tokens_map.json``, when present, must be JSON objects whose special
  token entries are strings (or ``{"content": str}``) the tokenizer knows;
- ``generation_config.json``'s ``eos_token_id`` / ``bos_token_id`` / ``pad_token_id``: int or list of ints
  inside the vocabulary (a string there made the manifest writer fail with a TypeError);
- the chat template must parse as Jinja (the syntax transformers' ``apply_chat_template`` uses), so a broken
  template fails at export, not in the app that loads the bundle.

Every failure is one ``CheckpointError`` / ``UnsupportedError`` line naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import CheckpointError, UnsupportedError

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
GENERATION_IDS = ("eos_token_id", "bos_token_id", "pad_token_id", "decoder_start_token_id")
# formats whose engines tokenize with `tokenizers` itself (the bundle's tokenizer.json), normalizer included
MIRRORS_NORMALIZER = ("onnx", "executorch")


def _json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 (byte {exc.start}); save it again as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]}); fix or re-save it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a JSON {type(data).__name__}, expected an object; fix or re-save it")
    return data


def _processors(pp: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(pp, dict):
        yield pp
        for sub in pp.get("processors") or []:  # "Sequence" post-processor
            yield from _processors(sub)


def known_tokens(tok: Mapping[str, Any]) -> dict[str, int]:
    """token text -> id over the model vocabulary and the added tokens (tokenizer.json layout)."""
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    vocab = model.get("vocab")
    out: dict[str, int] = {}
    if isinstance(vocab, dict):
        out.update({k: v for k, v in vocab.items() if isinstance(v, int)})
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        out.update({p[0]: i for i, p in enumerate(vocab) if isinstance(p, list) and p and isinstance(p[0], str)})
    for t in tok.get("added_tokens") or []:
        if isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int):
            out[t["content"]] = t["id"]
    return out


def check_post_processor(path: Path, tok: Mapping[str, Any]) -> None:
    known = known_tokens(tok)
    for pp in _processors(tok.get("post_processor")):
        if pp.get("type") != "TemplateProcessing":
            continue
        special = pp.get("special_tokens") or {}
        if not isinstance(special, dict):
            raise CheckpointError(f"{path}: post_processor.special_tokens must be an object; fix the tokenizer")
        for which in ("single", "pair"):
            for piece in pp.get(which) or []:
                name = piece.get("SpecialToken", {}).get("id") if isinstance(piece, dict) else None
                if name is not None and name not in special:
                    raise CheckpointError(
                        f"{path}: post_processor.{which} names special token {name!r}, which its special_tokens do "
                        "not define (tokenizers would panic on every encode); fix the post-processor"
                    )
        for name, entry in special.items():
            ids = entry.get("ids") if isinstance(entry, dict) else None
            tokens = entry.get("tokens") if isinstance(entry, dict) else None
            if not isinstance(ids, list) or not isinstance(tokens, list) or len(ids) != len(tokens):
                raise CheckpointError(f"{path}: post_processor.special_tokens[{name!r}] needs ids and tokens of one "
                                      "length; fix the post-processor")
            for i, t in zip(ids, tokens):
                if known.get(t) != i:
                    raise CheckpointError(
                        f"{path}: post_processor.special_tokens[{name!r}] maps {t!r} to id {i}, but the tokenizer "
                        f"has it as {known.get(t)}; fix the post-processor"
                    )


def check_normalizer(path: Path, tok: Mapping[str, Any], fmt: str) -> None:
    norm = tok.get("normalizer")
    if norm is None or fmt in MIRRORS_NORMALIZER:
        return
    kinds = [n.get("type", "?") for n in (norm.get("normalizers") or [norm])] if isinstance(norm, dict) else ["?"]
    raise UnsupportedError(
        f"{path}: the tokenizer has a {'+'.join(map(str, kinds))} normalizer, which llama.cpp does not apply (GGUF "
        f"would tokenize text such as '½' differently); export with --format {' or '.join(MIRRORS_NORMALIZER)}, "
        "whose sessions run this tokenizer"
    )


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def check_special_files(root: Path, known: Mapping[str, int]) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = root / name
        if not path.is_file():
            continue
        data = _json_object(path)
        for key in SPECIAL_KEYS:
            if key not in data or data[key] is None:
                continue
            text = _token_text(data[key])
            if text is None:
                raise CheckpointError(f"{path}: {key} must be a string or {{\"content\": string}}, got "
                                      f"{type(data[key]).__name__}; fix the file")
            if text not in known:
                raise CheckpointError(f"{path}: {key} {text!r} is not a token of tokenizer.json; fix the file or add "
                                      "the token to the tokenizer")
        for key in ("additional_special_tokens", "extra_special_tokens"):  # the latter: transformers 5
            extra = data.get(key)
            if isinstance(extra, dict):
                extra = list(extra.values())
            if extra is not None and not isinstance(extra, list):
                raise CheckpointError(f"{path}: {key} must be a list; fix the file")
            for t in extra or []:
                text = _token_text(t)
                if text is None or text not in known:
                    raise CheckpointError(f"{path}: {key} entry {str(t)[:60]!r} is not a token of tokenizer.json; "
                                          "fix the file")
        if name == "tokenizer_config.json":
            for key in ("add_bos_token", "add_eos_token"):
                if key in data and not isinstance(data[key], bool) and data[key] is not None:
                    raise CheckpointError(f"{path}: {key} must be true or false, got {data[key]!r}; fix the file")
            template = data.get("chat_template")
            if template is not None and not isinstance(template, (str, list)):
                raise CheckpointError(f"{path}: chat_template must be a string (or a list of named templates); fix "
                                      "the file")


def check_generation_config(root: Path, vocab_size: int) -> None:
    path = root / "generation_config.json"
    if not path.is_file():
        return
    data = _json_object(path)
    for key in GENERATION_IDS:
        value = data.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool):
                raise CheckpointError(f"{path}: {key} must be an int or a list of ints, got {v!r}; fix the file")
            if not 0 <= v < vocab_size:
                raise CheckpointError(f"{path}: {key} {v} is outside the vocabulary (0..{vocab_size - 1}); fix the file")


def chat_templates(root: Path) -> list[tuple[str, str]]:
    """(where, template text) for every chat template the checkpoint ships."""
    out = []
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        try:
            out.append((str(jinja), jinja.read_bytes().decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{jinja}: not UTF-8 (byte {exc.start}); save it again as UTF-8") from None
    cfg = root / "tokenizer_config.json"
    if cfg.is_file():
        t = _json_object(cfg).get("chat_template")
        if isinstance(t, str):
            out.append((f"{cfg} chat_template", t))
        elif isinstance(t, list):
            for i, entry in enumerate(t):
                if not isinstance(entry, dict) or not isinstance(entry.get("template"), str):
                    raise CheckpointError(f"{cfg}: chat_template[{i}] must be {{\"name\", \"template\"}}; fix the file")
                out.append((f"{cfg} chat_template[{entry.get('name', i)!r}]", entry["template"]))
    return out


def check_chat_template(root: Path) -> None:
    """Parse every template with the sandboxed Jinja environment transformers renders chat templates with."""
    templates = chat_templates(root)
    if not templates:
        return
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    for where, text in templates:
        try:
            env.parse(text)
        except TemplateSyntaxError as exc:
            raise CheckpointError(f"{where}: chat template syntax error at line {exc.lineno}: {exc.message}; fix the "
                                  "template") from None


def check_tokenizer_files(root: Path, fmt: str, vocab_size: int) -> None:
    """All plan-time tokenizer checks of a language checkpoint at ``root`` for export format ``fmt``.

    Raises CheckpointError (a file that is malformed or inconsistent) or UnsupportedError (a tokenizer feature the
    format's engine does not mirror), one line each."""
    path = root / "tokenizer.json"
    if not path.is_file():
        return  # the checkpoint reader refuses a language model without one
    tok = _json_object(path)
    check_post_processor(path, tok)
    check_normalizer(path, tok, fmt)
    check_special_files(root, known_tokens(tok))
    check_generation_config(root, vocab_size)
    check_chat_template(root)


def check_checkpoint(checkpoint: Any, fmt: str) -> None:
    """``check_tokenizer_files`` for an opened language checkpoint (other kinds have no tokenizer)."""
    if getattr(checkpoint.family.kind, "value", None) != "language":
        return
    vocab = getattr(checkpoint.model_config, "vocab_size", None)
    check_tokenizer_files(Path(checkpoint.path), fmt, int(vocab) if isinstance(vocab, int) else 1 << 31)


# Verification's tokenizer check text: held-out prose is nearly all ASCII, so it adds accents, CJK, an emoji,
# super/subscripts and vulgar fractions (what NFKC would change), digit runs (llama.cpp splits digits by its
# pre-tokenizer regex), tabs, CRLF, runs of spaces, and every added token of the tokenizer.
PROBE = "Prix: 1 234,50 € — ½ café naïve 東京 😀 x²=4 3.14159 0x1F\tTab  two  spaces\r\nline 12345678 "


def probe_text(tok: Any) -> str:
    """``PROBE`` followed by every added token of ``tok`` (a ``tokenizers.Tokenizer``), space-separated."""
    added = [t.content for _, t in sorted(tok.get_added_tokens_decoder().items())]
    return PROBE + " ".join(added) + " end"
