#!/usr/bin/env bash
# One prepared GPU check (issue 16): CUDA-only tests, bf16 (and compiled) training steps of PHMDiff-B/2 and
# -XL/2 with the fraction of the measured bf16 peak and peak memory, and the translation of one 240x240x155
# volume; writes ONE JSON (benchmarks/results/gpu_check.json unless --out FILE). Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                        # on a CUDA machine
#   bash benchmarks/gpu_check.sh --device cpu --quick   # the same code at tiny sizes, on any machine
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python)}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
# 470 s: the whole check stays under 8 minutes even when a step hangs; the JSON is written at the end.
exec timeout 470 "$python" "$here/gpu_check.py" "$@"
