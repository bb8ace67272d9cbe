#!/usr/bin/env bash
# The GPU acceptance run of the plugin: one command, <= 5 minutes on one H100 (checks and their
# meaning: benchmarks/gpu_acceptance.py). Prints `CHECK <name> PASS|FAIL|SKIP <detail>` per check and
# `DONE fails=N` last; exits non-zero on a FAIL or, on a GPU, when a required check is SKIP.
#
#   bash benchmarks/gpu_acceptance.sh                 # on the GPU machine ($OUT/gpu_acceptance.json when OUT is set)
#   bash benchmarks/gpu_acceptance.sh --cpu-smoke     # here: every check that can run on a CPU (the test suite runs it)
#
# The lent GPU machine has torch, transformers, peft and accelerate but no ms-swift, DeepSpeed,
# flash-attn or wordllama, and no network. Build what it lacks here and carry it (<= 64 MiB in all,
# the device tool's `carry`: the folder gpu_carry/, git-ignored):
#
#   mkdir -p gpu_carry/wheels
#   # ms-swift and the requirements of it a plain torch/transformers machine lacks (pure-Python wheels)
#   pip download --no-deps -d gpu_carry/wheels 'ms-swift==4.6.*' modelscope addict attrdict binpacking dacite \
#       json-repair rouge simplejson sortedcontainers transformers-stream-generator cpm-kernels trl zstandard \
#       qwen-vl-utils oss2 crcmod aliyun-python-sdk-core aliyun-python-sdk-kms
#   # DeepSpeed ships as a source package: built on the GPU machine without its CUDA ops (DS_BUILD_OPS=0)
#   pip download --no-deps --no-binary :all: -d gpu_carry/wheels 'deepspeed==0.19.*'
#   pip download --no-deps -d gpu_carry/wheels hjson ninja py-cpuinfo msgpack nvidia-ml-py
#   du -sh gpu_carry                                  # must stay under 64 MiB
#
# flash-attn (a wheel of several hundred MB) does not fit: the padding-free swift check is SKIP
# with that reason, and the packed text pass is checked with torch's own attention.
# Nothing here downloads on the GPU machine: a wheel that is not carried leaves its checks SKIP,
# each naming what is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"  # the interpreter with torch (the test suite passes its own)
if [ -d gpu_carry/wheels ] && [ "${1:-}" != "--cpu-smoke" ]; then
    DS_BUILD_OPS=0 "$PYTHON" -m pip install --quiet --no-index --find-links gpu_carry/wheels \
        gpu_carry/wheels/* 2>&1 | tail -n 3 || echo "gpu_acceptance: some carried wheels did not install"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PYTHON" benchmarks/gpu_acceptance.py "$@"
