"""Mobile-app layouts of a bundle: ``edgekit bundle BUNDLE --for TARGET -o DIR`` copies exactly the files an app
template loads, writes a small JSON of settings (``edgekit-app.json``), the load-and-run call for the platform
(``LoadModel.kt`` / ``LoadModel.swift``) and a step-by-step README.

Targets (what each app template expects, from the engines' own app APIs):

* ``android-executorch``: ExecuTorch's Android AAR (``org.pytorch:executorch-android``), its LLM runner
  ``org.pytorch.executorch.extension.llm.LlmModule(modelPath, tokenizerPath, temperature, dataPath)``: the
  program ``model.pte``, its data file ``model.ptd`` when the export wrote one, and ``tokenizer.json`` (the
  runner's tokenizer reads Hugging Face tokenizer.json, with BOS/EOS from ``tokenizer_config.json`` beside it).
* ``ios-executorch``: ExecuTorch's ``ExecuTorchLLM`` framework, ``TextRunner(modelPath:tokenizerPath:)``
  (Objective-C ``ExecuTorchLLMTextRunner``): the same files, but that initialiser takes no data file, so the
  program must hold every weight (re-export with ``--shared-embedding off`` when the bundle has a ``.ptd``).
* ``android-llamacpp``: llama.cpp's Android library (``examples/llama.android``, ``InferenceEngine.loadModel``):
  ``model.gguf`` alone — GGUF carries the tokenizer and the chat template.

Nothing here builds an APK or an app: no Android SDK or Xcode runs on this machine.  The tests check each layout
against what the engines' own runners load (ExecuTorch's ``TextLLMRunner``, llama.cpp's ``Llama``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edgekit.hashing import sha256_file

SETTINGS = "edgekit-app.json"


@dataclass(frozen=True)
class Target:
    """An app template: the bundle format it takes, the platform, and the snippet's language."""

    name: str
    format: str  # the bundle format it needs
    platform: str  # "android" | "ios"
    snippet: str  # file name of the load call
    device_dir: str  # where the guide puts the files on the device


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("android-executorch", "executorch", "android", "LoadModel.kt", "/data/local/tmp/edgekit/{name}"),
        Target("ios-executorch", "executorch", "ios", "LoadModel.swift", "the app bundle (Copy Bundle Resources)"),
        Target("android-llamacpp", "gguf", "android", "LoadModel.kt", "{files_dir}/models/{name}"),
    )
}


def plan_files(root: Path, manifest: Mapping[str, Any], target: Target) -> list[str]:
    """The bundle files the target's app loads (names relative to the bundle).  Raises UnsupportedError when the
    bundle does not fit the target (format, kind, a data file the iOS runner cannot take)."""
    from edgekit.errors import UnsupportedError

    kind, fmt = manifest.get("kind", "language"), manifest.get("format")
    if kind != "language":
        raise UnsupportedError(f"{root} is a {kind} model; the app templates run language models (chat). A solver "
                               "bundle runs in apps/solver (edgekit serve) instead")
    if fmt != target.format:
        raise UnsupportedError(f"--for {target.name} takes a {target.format} bundle and {root} is {fmt}; re-export "
                               f"with --format {target.format}")
    artifact = manifest.get("artifact") or {}
    files = [str(artifact.get("file") or "")]
    if target.format == "executorch":
        data = [str(f) for f in artifact.get("data_files") or []]
        if data and target.platform == "ios":
            raise UnsupportedError(
                f"{root} keeps weights in {', '.join(data)}, and ExecuTorch's iOS TextRunner takes only a program "
                "and a tokenizer; re-export with --shared-embedding off so that model.pte holds every weight")
        if len(data) > 1:
            raise UnsupportedError(f"{root} has {len(data)} data files ({', '.join(data)}); LlmModule takes one")
        files += data + ["tokenizer.json", "tokenizer_config.json"]
    adapters = (manifest.get("adapters") or {}).get("items") or {}
    if adapters and target.format == "executorch":
        raise UnsupportedError(
            f"{root} keeps its adapters ({', '.join(adapters)}) separate, as program inputs that ExecuTorch's LLM "
            "runners (LlmModule, TextRunner) cannot pass; export the adapter the app needs with --lora-mode merged")
    files += [str(a.get("file") or "") for a in adapters.values()]  # llama.cpp attaches GGUF adapters at run time
    missing = [f for f in files if not f or not (root / f).is_file()]
    if missing:
        raise UnsupportedError(f"{root}: {', '.join(missing) or 'the artifact'} missing; re-export the bundle")
    return files


def settings(manifest: Mapping[str, Any], target: Target, files: list[str], name: str) -> dict[str, Any]:
    """``edgekit-app.json``: what an app needs besides the files (all values from the bundle's manifest)."""
    model = manifest.get("model") or {}
    artifact = manifest.get("artifact") or {}
    template = model.get("chat_template")
    out: dict[str, Any] = {
        "schema": 1,
        "target": target.name,
        "name": name,
        "family": manifest.get("family"),
        "format": manifest.get("format"),
        "quant": ((manifest.get("plan") or {}).get("quant") or {}).get("name"),
        "model_file": files[0],
        "context_length": int(artifact.get("max_context") or model.get("context_length") or 0) or None,
        "bos_id": model.get("bos_id"),
        "eos_ids": model.get("eos_ids"),
        "add_bos": model.get("add_bos"),
        "chat_template": template,
        "stop_texts": [t for t in ("<|im_end|>",) if template and t in template],
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256},
    }
    adapters = (manifest.get("adapters") or {}).get("items") or {}
    if adapters:  # llama.cpp LoRA adapter GGUFs, applied at run time with a scale (none is active by default)
        out["adapters"] = [{"name": n, "file": a["file"], "scale": 1.0} for n, a in adapters.items()]
    if target.format == "executorch":
        out["data_file"] = files[1] if len(files) > 3 else None
        out["tokenizer_file"] = "tokenizer.json"
    return out


def _snippet(target: Target, s: Mapping[str, Any]) -> str:
    ctx = s.get("context_length") or 512
    if target.name == "android-executorch":
        data = f'"$dir/{s["data_file"]}"' if s.get("data_file") else "null"
        return f"""// Generated by `edgekit bundle --for android-executorch`: load {s['name']} and stream an answer.
// Gradle: implementation("org.pytorch:executorch-android:<the ExecuTorch release that exported the bundle>")
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

class EdgekitModel(dir: String = "/data/local/tmp/edgekit/{s['name']}") {{
    private val module = LlmModule("$dir/{s['model_file']}", "$dir/{s['tokenizer_file']}", {s['sampling']['temperature']}f, {data})

    init {{
        check(module.load() == 0) {{ "ExecuTorch could not load $dir/{s['model_file']}" }}
    }}

    /** Streams the answer to [prompt] (already formatted with the chat template in edgekit-app.json). */
    fun generate(prompt: String, onPiece: (String) -> Unit) {{
        val callback = object : LlmCallback {{
            override fun onResult(result: String) = onPiece(result)
            override fun onStats(stats: String) {{}}
        }}
        // seqLen counts prompt + answer tokens; at most the program's context ({ctx})
        module.generate(prompt, {ctx}, callback, false)
    }}

    fun stop() = module.stop()
    fun reset() = module.resetContext()
}}
"""
    if target.name == "ios-executorch":
        return f"""// Generated by `edgekit bundle --for ios-executorch`: load {s['name']} and stream an answer.
// Swift Package: https://github.com/pytorch/executorch (branch swiftpm-<release>), products executorch,
// backend_xnnpack, kernels_llm, kernels_optimized, executorch_llm; add model.pte and tokenizer.json to the app target.
import ExecuTorchLLM

final class EdgekitModel {{
    private let runner: TextRunner

    init() throws {{
        guard let model = Bundle.main.path(forResource: "{Path(s['model_file']).stem}", ofType: "pte"),
              let tokenizer = Bundle.main.path(forResource: "tokenizer", ofType: "json") else {{
            throw NSError(domain: "edgekit", code: 1, userInfo: [NSLocalizedDescriptionKey: "model files missing"])
        }}
        runner = TextRunner(modelPath: model, tokenizerPath: tokenizer)
        try runner.load()
    }}

    /// Streams the answer to `prompt` (already formatted with the chat template in edgekit-app.json).
    func generate(_ prompt: String, onPiece: @escaping (String) -> Void) throws {{
        try runner.generate(prompt, Config {{
            $0.temperature = {s['sampling']['temperature']}
            $0.sequenceLength = {ctx}
        }}) {{ piece in onPiece(piece) }}
    }}

    func stop() {{ runner.stop() }}
    func reset() {{ runner.reset() }}
}}
"""
    return f"""// Generated by `edgekit bundle --for android-llamacpp`: load {s['name']} with llama.cpp's Android library
// (the `lib` module of llama.cpp's examples/llama.android, package com.arm.aichat) and stream an answer.
import android.content.Context
import com.arm.aichat.AiChat
import com.arm.aichat.InferenceEngine
import kotlinx.coroutines.flow.Flow
import java.io.File

class EdgekitModel(context: Context) {{
    private val engine: InferenceEngine = AiChat.getInferenceEngine(context)
    private val model = File(context.filesDir, "models/{s['name']}/{s['model_file']}")

    /** Call once, off the main thread. The GGUF carries the tokenizer and the chat template. */
    suspend fun load() = engine.loadModel(model.path)

    /** The answer to one user message, as a stream of text pieces (the engine applies the chat template). */
    fun ask(message: String): Flow<String> = engine.sendUserPrompt(message)

    fun close() = engine.destroy()
}}
"""


def _guide(target: Target, s: Mapping[str, Any], files: list[str]) -> str:
    name = s["name"]
    listing = "\n".join(f"- `{f}`" for f in [*files, SETTINGS, target.snippet]) + (
        "\n- `edgekit.json` (the bundle's manifest: sha256 of every file, verification report; the app needs "
        "not read it)\n- `README.md` (this guide)")
    common = f"""# {name} for {target.name}

Laid out by `edgekit bundle --for {target.name}` from an edgekit bundle ({s['family']}, {s['format']} {s['quant']}).

Files:

{listing}

`{SETTINGS}` holds what the app needs besides the files: context length, BOS/EOS ids, the chat template and its
stop text, default sampling. Format the conversation with the chat template before calling generate (the
ExecuTorch runners take plain text; llama.cpp's Android library applies the GGUF's template itself).

Not tested here: no Android SDK, emulator or Xcode runs on the machine that made this; edgekit's tests load these
exact files with the engines' own runners on the host (ExecuTorch's TextLLMRunner, llama.cpp's Llama).
"""
    if s.get("adapters"):
        common += f"""
Adapters ({', '.join(a['name'] for a in s['adapters'])}): llama.cpp LoRA adapter files under `adapters/`, applied on
top of the base at run time. The example's Kotlin `InferenceEngine` has no adapter call, so attach one in its JNI
layer with llama.cpp's C API: `llama_adapter_lora_init(model, path)` once per file, then
`llama_set_adapters_lora(ctx, &adapter, 1, &scale)` to switch it in (`n_adapters` 0 for the base alone).
"""
    if target.name == "android-executorch":
        return common + f"""
## Steps

1. Add ExecuTorch's Android library to the app's `build.gradle.kts`:
   `implementation("org.pytorch:executorch-android:<version>")`, the same ExecuTorch release that exported the
   bundle (the program format and the runner must match).
2. Push the files to the phone (development; a released app downloads them or ships them as assets and copies
   them to `filesDir`, since the runner reads paths, not assets):

   ```bash
   adb shell mkdir -p /data/local/tmp/edgekit/{name}
   adb push {' '.join(files)} /data/local/tmp/edgekit/{name}/
   ```
3. Copy `{target.snippet}` into the app, create `EdgekitModel()` off the main thread, and call
   `generate(prompt) {{ piece -> ... }}` from a background thread; `stop()` ends an answer early.
4. Byte-level tokens can end inside a UTF-8 character: collect pieces per answer rather than rendering each
   piece alone if the model writes non-ASCII text.
"""
    if target.name == "ios-executorch":
        return common + f"""
## Steps

1. In Xcode, add the package `https://github.com/pytorch/executorch` (the `swiftpm-<release>` branch of the
   ExecuTorch release that exported the bundle) and link `executorch`, `backend_xnnpack`, `kernels_llm`,
   `kernels_optimized` and `executorch_llm`; add `-all_load` to Other Linker Flags.
2. Drag `{files[0]}` and `tokenizer.json` into the app target (Copy Bundle Resources).
3. Copy `{target.snippet}` into the app, create `EdgekitModel()` off the main thread and call
   `generate(prompt) {{ piece in ... }}`; `stop()` ends an answer early.
"""
    return common + f"""
## Steps

1. Add llama.cpp's Android library module (`examples/llama.android/lib` of the llama.cpp release whose GGUF
   support matches: edgekit pins llama-cpp-python 0.3.36) to the project, and depend on it from the app.
2. Put the model where the app reads it, `filesDir/models/{name}/{files[0]}`; during development:

   ```bash
   adb push {files[0]} /data/local/tmp/{files[0]}
   adb shell run-as <your.app.id> mkdir -p files/models/{name}
   adb shell run-as <your.app.id> cp /data/local/tmp/{files[0]} files/models/{name}/
   ```
3. Copy `{target.snippet}` into the app; call `load()` once from a coroutine (Dispatchers.IO), then collect
   `ask(message)` to stream the answer.
"""


def lay_out(bundle: Path, target: Target, out: Path, force: bool = False) -> Path:
    """Write the layout for ``target`` to ``out`` (staged beside it, renamed into place) and return ``out``.

    Every copied file is checked against the bundle manifest's sha256.  Raises UnsupportedError when the bundle
    does not fit the target, BundleError for a damaged bundle, EdgekitError when ``out`` exists (unless
    ``force`` and it is an earlier layout)."""
    from edgekit.bundle import check_files, read_manifest
    from edgekit.errors import BundleError, EdgekitError

    root = Path(bundle)
    manifest = read_manifest(root)
    check_files(root, manifest)
    files = plan_files(root, manifest, target)
    out = Path(out)
    if out.exists():
        if not (force and (out / SETTINGS).is_file()):
            raise EdgekitError(f"{out} exists; choose another -o, or --force to replace an earlier layout")
    name = root.resolve().name
    stage = out.with_name(f".{out.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        recorded = manifest.get("files") or {}
        for f in files:
            dest = stage / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / f, dest)
            want = (recorded.get(f) or {}).get("sha256")
            if want and sha256_file(dest) != want:
                raise BundleError(f"{root / f}: sha256 differs from the manifest; re-export the bundle")
        shutil.copyfile(root / "edgekit.json", stage / "edgekit.json")
        s = settings(manifest, target, files, name)
        (stage / SETTINGS).write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
        (stage / target.snippet).write_text(_snippet(target, s), encoding="utf-8")
        (stage / "README.md").write_text(_guide(target, s, files), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        stage.replace(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out
