#!/bin/bash
# On a machine with several GPUs: the multi-GPU bench (`kielo bench --nproc N`, kielo/bench/multigpu.py), run
# through bench/run_qlora_bench.sh (which installs the carried wheels); results.json lands in $OUT.
#   bash bench/run_multi_gpu_bench.sh ddp N      Llama-3.1-8B shape: kielo's data-parallel step in 1 and N processes
#   bash bench/run_multi_gpu_bench.sh make70b    build the random Llama-3.1-70B shape once (on the CPU; ~141 GB of disk)
#   bash bench/run_multi_gpu_bench.sh fsdp N     that shape: kielo+fsdp against stock+fsdp, both in N processes
# Further arguments go to kielo bench (e.g. --worker_timeout 1800 for the 70B shape's loading).
set -u
cd "$(dirname "$0")/.."
stage=${1:?give a stage: ddp N, make70b or fsdp N}
shift
case $stage in
  ddp) n=${1:?give the number of GPUs}; shift; exec bash bench/run_qlora_bench.sh --nproc "$n" --shape llama8b --cases "kielo:a" "$@" ;;
  make70b) exec bash bench/run_qlora_bench.sh --make --shape llama70b "$@" ;;
  fsdp) n=${1:?give the number of GPUs}; shift
    exec bash bench/run_qlora_bench.sh --nproc "$n" --shape llama70b --cases "kielo+fsdp:a stock+fsdp:a" "$@" ;;
  *) echo "unknown stage $stage: ddp N, make70b or fsdp N" >&2; exit 2 ;;
esac
