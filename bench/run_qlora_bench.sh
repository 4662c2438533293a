#!/bin/bash
# On the GPU machine: install the carried wheels (WHL, default .whl: bitsandbytes, liger-kernel; several folders space-separated), then run
# `kielo bench` (kielo/bench) with the given arguments (results.json lands in $OUT). A first argument --research
# runs bench/research_variants.py instead: the same bench with the research variants and case options.
set -u
cd "$(dirname "$0")/.."
# WHL: one or more wheel folders (".whl .whl2": bitsandbytes + liger, and Unsloth's set with TRL).
wheels=(); for d in ${WHL:-.whl}; do wheels+=("$d"/*.whl); done
# One folder per wheel set: a set installed by an earlier invocation (Unsloth's .whl2) must not stay on the path of
# a later one (it slowed kielo's Gemma 3 4B step by a third: bench/NOTES.md, "Fourth run").
site=/tmp/site-$(echo "${WHL:-.whl}" | tr -c 'A-Za-z0-9\n' _)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" || exit 1
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
  HF_HUB_DISABLE_PROGRESS_BARS=1
if [ "${1:-}" = "--research" ]; then
  shift
  exec python3 bench/research_variants.py "$@"
fi
exec python3 -m kielo bench "$@"
