#!/usr/bin/env bash
# The prepared device check (issue: scale): every GPU phase of llama3_8b in bf16 and gemma3_12b in
# int8, at the baseline's size, randomly initialised from the real configs. Budget: under 8 minutes.
#   bash benchmarks/gpu_check.sh            (on a machine with one CUDA GPU; writes $OUT/real_shape.txt)
set -euo pipefail
out="${OUT:-.}/real_shape.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out"
for args in "--model llama3_8b --dtype bfloat16" "--model gemma3_12b --dtype bfloat16 --int8"; do
    timeout 220 python benchmarks/real_shape.py $args --batch-size 64 2>&1 | grep -v "it/s]" | tee -a "$out" || \
        echo "real_shape.py $args: exit $?" | tee -a "$out"
done
