#!/usr/bin/env bash
# One GPU check, under 10 minutes on an H100/H200, written to one JSON:
#   1. the CUDA training smoke: d16 shapes, a few BF16 steps of stage 2, through torchrun with one process
#      (train.py's setup_distributed: the NCCL process group on a GPU, Gloo on a CPU);
#   2. the GPU latencies: benchmark.py --device cuda (eager FP32, BF16 autocast, torch.compile with CUDA graphs,
#      ONNX Runtime's CUDA / TensorRT providers and a TensorRT engine where present);
#   3. the GPU-against-CPU token parity of each of those paths (in the same benchmark run).
#
#   bash docs/gpu_check.sh                                  # on the GPU machine: d16, cuda -> gpu_check.json
#   bash docs/gpu_check.sh --device cpu --preset tiny --steps 2 --quick --out /tmp/check   # the script itself, anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda PRESET=d16 STEPS=4 BATCH=4 OUT=gpu_check QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (--device cpu|cuda, --preset, --steps, --batch-size, --out, --quick)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cpu|cuda) ;; *) echo "gpu_check.sh: --device must be cpu or cuda, not $DEVICE" >&2; exit 2 ;; esac
mkdir -p "$OUT"
PY=${PYTHON:-python}
if [ "$DEVICE" = cpu ]; then export CUDA_VISIBLE_DEVICES=""; AMP=off; else AMP=bf16; fi
start=$(date +%s)

# 1. training smoke: torchrun, one process (NCCL on the GPU, Gloo on the CPU), BF16 on the GPU
t0=$(date +%s)
"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 train.py --data synthetic --preset "$PRESET" \
    --stage transformer --objective depthart --steps "$STEPS" --batch-size "$BATCH" --amp "$AMP" --lr 1e-4 \
    --log-every 1 --val-every 100000 --val-samples 2 --save-every 100000 --out "$OUT/train" > "$OUT/train.log" 2>&1 \
  || { echo "gpu_check.sh: the training smoke failed; the end of $OUT/train.log:" >&2; tail -20 "$OUT/train.log" >&2; exit 1; }
train_s=$(( $(date +%s) - t0 ))

# 2 and 3. latencies and token parity on the device
t0=$(date +%s)
if [ "$QUICK" = 1 ]; then EXTRA=(--reps 1 --images 2 --skip ort trt compile); else EXTRA=(--reps 20 --images 6); fi
"$PY" benchmark.py --preset "$PRESET" --device "$DEVICE" "${EXTRA[@]}" --json "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1 \
  || { echo "gpu_check.sh: the benchmark failed; the end of $OUT/benchmark.log:" >&2; tail -20 "$OUT/benchmark.log" >&2; exit 1; }
bench_s=$(( $(date +%s) - t0 ))

"$PY" - "$OUT" "$DEVICE" "$PRESET" "$train_s" "$bench_s" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, sys
from pathlib import Path
out, device, preset, train_s, bench_s, total_s = sys.argv[1:]
log = Path(out, "train", "metrics.jsonl")
rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
losses = [r["loss"] for r in rows if "loss" in r]
if not losses:
    sys.exit(f"gpu_check.sh: the training smoke logged no loss ({log})")
report = {"device": device, "preset": preset, "seconds": {"train": int(train_s), "benchmark": int(bench_s), "total": int(total_s)},
          "train": {"steps": len(losses), "losses": losses, "finite": all(l == l and abs(l) != float("inf") for l in losses),
                    "last_row": rows[-1]},
          "benchmark": json.loads(Path(out, "benchmark.json").read_text())}
Path(out, "gpu_check.json").write_text(json.dumps(report, indent=1))
print(f"wrote {out}/gpu_check.json: {len(losses)} training steps, losses {losses[0]:.3f} .. {losses[-1]:.3f}, "
      f"{total_s} s in all")
PYEOF
