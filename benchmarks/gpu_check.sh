#!/usr/bin/env bash
# The prepared device check, one run of at most 10 minutes on a lent GPU, one JSON ($OUT/gpu_check.json):
#   1. every GPU phase of llama3_8b in bf16 at the baseline's size (random weights from the real config),
#   2. the same for gemma3_12b in int8 (weight-only, torchao), its peak memory beside the plan's prediction,
#   3. the 8-bit candidates on Gemma-3 270M's real weights (benchmarks/int8_fidelity.py), where the checkpoint
#      `make real` writes (results/real/models/gemma3_270m) was carried; else it says it was skipped.
# Without a GPU it is a dry run on CPU: gpt2_small at fp32 on 8 pairs, and the fidelity on 12 items.
#   bash benchmarks/gpu_check.sh            (PYTHON=.venv/bin/python to name the interpreter)
set -uo pipefail
python="${PYTHON:-python}"
out="${OUT:-.}"
mkdir -p "$out"
log="$out/gpu_check.txt"
: > "$log"
if command -v nvidia-smi > /dev/null && nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
    shapes=("llama3_8b --dtype bfloat16 --batch-size 64" "gemma3_12b --dtype bfloat16 --int8 --batch-size 16")
    limit=200 fidelity_limit=150 fidelity="--dtype bfloat16 --builds int8 llm.int8 --device cuda"
else
    echo "no GPU: dry run on CPU" | tee -a "$log"
    shapes=("gpt2_small --max-pairs 8 --steer 8 --batch-size 32")
    limit=900 fidelity_limit=600 fidelity="--builds int8 llm.int8 --max-items 12 --device cpu"  # no bf16 units
fi
# logged SECONDS SCRIPT ARGS...: run a benchmark under a time limit, its output (progress bars left out) to the log
logged() {
    local limit="$1"; shift
    timeout "$limit" "$python" "$@" 2>&1 | tr '\r' '\n' | grep -v -E "it/s]|s/it]" | tee -a "$log" \
        || echo "$*: exit ${PIPESTATUS[0]}" | tee -a "$log"
}
for args in "${shapes[@]}"; do
    logged "$limit" benchmarks/real_shape.py --model $args --json "$out/real_shape_${args%% *}.json"
done
if [ -f results/real/models/gemma3_270m/config.json ]; then
    logged "$fidelity_limit" benchmarks/int8_fidelity.py --config config/real.yaml --model gemma3_270m $fidelity \
        --out "$out/int8_fidelity.json"
else
    echo "int8 fidelity skipped: no checkpoint at results/real/models/gemma3_270m (make real writes it)" | tee -a "$log"
fi
"$python" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "gpu_check.json"}
(out / "gpu_check.json").write_text(json.dumps(parts, indent=1))
print(f"wrote {out / 'gpu_check.json'}: {', '.join(parts) or 'nothing measured'}")
EOF
