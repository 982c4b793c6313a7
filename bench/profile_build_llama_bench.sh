#!/usr/bin/env bash
# Build llama.cpp's own benchmark tool (llama-bench) from the llama.cpp that llama-cpp-python vendors, so
# bench/profile_llamacpp_check.py can compare edgekit's figures with llama.cpp's on the same GGUF file.
# The source comes from the llama-cpp-python sdist (pip's cache); the binary lands in
# ~/.cache/edgekit/llama-bench/bin/llama-bench.  At run time the check points LD_LIBRARY_PATH at the
# libllama/libggml of the installed llama-cpp-python, so both sides run the very same library binary.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${EDGEKIT_CACHE:-$HOME/.cache/edgekit}/llama-bench"
mkdir -p "$CACHE"
cd "$CACHE"
if [ ! -d "src/llama_cpp_python-$VERSION" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d sdist
    mkdir -p src && tar -xzf "sdist/llama_cpp_python-$VERSION.tar.gz" -C src
fi
SRC="src/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON > configure.log 2>&1
cmake --build build --target llama-bench -j "${JOBS:-2}" > build.log 2>&1
mkdir -p bin && cp build/bin/llama-bench bin/
echo "$CACHE/bin/llama-bench"
