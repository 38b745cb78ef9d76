#!/usr/bin/env bash
# The default model for real photographs (preset `small`, the `world` synthetic scenes) and the
# DepthART-vs-teacher-forcing experiment on it, end to end on a CPU; every run resumes where it stopped.
#
#   bash docs/train_world.sh            # picks up where the last session stopped
#
# Training spans sessions: at the end of one, `bash docs/train_world.sh --park` stops the running stage
# (SIGTERM saves it) and copies its checkpoint to weights/resume/ for committing; the next session's
# first call copies it back into runs/ and resumes exactly.
# Order: stage 1 (VQ-VAE, BF16 autocast), a teacher-forced warm start, then from the warm start for
# seeds 0, 1, 2: teacher forcing, DepthART, and teacher forcing for DepthART's wall-clock time.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-0}
SCENES=${SCENES:-16000}  # training scenes, rendered once into $RUNS/cache (2.3 GB) and read from there
VQ_STEPS=${VQ_STEPS:-3000}
WARM_STEPS=${WARM_STEPS:-3000}
CONT_STEPS=${CONT_STEPS:-900}
CONT_LR=${CONT_LR:-5e-4}
SEEDS=${SEEDS:-"0 1 2"}
RUNS=runs/world
PARKED=weights/resume

finished() {  # finished OUT STEPS: OUT's checkpoint has reached STEPS
    [ -f "$1/last.safetensors" ] && python -c "import sys, depthart as D; sys.exit(D.checkpoint_meta('$1/last.safetensors')['step'] < $2)"
}

if [ "${1:-}" = "--park" ]; then  # stop the stage that is running (it saves on SIGTERM) and keep its checkpoint
    pkill -TERM -f "train.py --data world --preset small" || true  # not a normals run (train_normals.sh)
    while pgrep -f "train.py --data world --preset small" >/dev/null; do sleep 2; done
    rm -rf "$PARKED"; mkdir -p "$PARKED"
    for d in "$RUNS"/*/; do
        [ -f "$d/last.safetensors" ] || continue
        mkdir -p "$PARKED/$(basename "$d")"
        cp "$d"/last.safetensors "$d"/metrics.jsonl "$d"/args.json "$PARKED/$(basename "$d")/"
        # The optimizer state where a run may go on: unfinished runs, and the teacher-forcing runs (an equal-time
        # run extends a copy of one). Other finished runs are only read (--init, the experiment).
        if [[ "$(basename "$d")" == cont_var_* ]] \
            || ! finished "$d" "$(python -c "import json; print(json.load(open('$d/args.json'))['steps'])")"; then
            cp "$d"/last.state.pt "$PARKED/$(basename "$d")/"
        fi
    done
    du -sh "$PARKED"; exit 0
fi
if [ -d "$PARKED" ] && [ ! -d "$RUNS" ]; then mkdir -p "$RUNS" && cp -r "$PARKED"/. "$RUNS"/; fi

run() {  # run OUT ARGS...: a training run, resumed if it has a checkpoint, skipped if it is finished
    local out=$1; shift
    local steps; steps=$(printf '%s\n' "$@" | grep -A1 -x -- --steps | tail -n1)
    if finished "$out" "$steps"; then echo "$out: finished ($steps steps)"; return 0; fi
    local resume=""; [ -f "$out/last.state.pt" ] && resume="--resume"
    python train.py --data world --preset small --batch-size 32 --threads "$THREADS" --workers "$WORKERS" \
        --train-scenes "$SCENES" --disk-cache $RUNS/cache --val-every 250 --val-samples 64 --save-every 50 \
        --out "$out" $resume "$@"
    # A run stopped by a signal saves and exits 0: the next stage must not start from it.
    finished "$out" "$steps" || { echo "$out stopped before step $steps: run this script again to continue"; exit 0; }
}

run $RUNS/vqvae --stage vqvae --steps "$VQ_STEPS" --lr 1e-3 --amp bf16
run $RUNS/var --stage transformer --objective var --init-vae $RUNS/vqvae/last.safetensors --steps "$WARM_STEPS" --lr 1e-3

for seed in $SEEDS; do
    run $RUNS/cont_var_s$seed --stage transformer --objective var --init $RUNS/var/last.safetensors \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    run $RUNS/cont_depthart_s$seed --stage transformer --objective depthart --init $RUNS/var/last.safetensors \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    # Equal wall clock: as many teacher-forced steps as fit in the DepthART run's training time. Batches and
    # learning rate depend on the step alone, not on --steps (tests/test_train.py checks it), so the seed's
    # teacher-forcing run, copied and resumed to that many steps, is that run without repeating its first steps.
    [ -d $RUNS/cont_var_time_s$seed ] || cp -r $RUNS/cont_var_s$seed $RUNS/cont_var_time_s$seed
    equal=$(python -c "from pathlib import Path; from experiment import run_info; t = lambda r: run_info(Path(r))['train_seconds']
print(round($CONT_STEPS * t('$RUNS/cont_depthart_s$seed') / t('$RUNS/cont_var_s$seed')))")
    run $RUNS/cont_var_time_s$seed --stage transformer --objective var --init $RUNS/var/last.safetensors \
        --steps "$equal" --lr "$CONT_LR" --seed "$seed"
done

group() { local out=""; for s in $SEEDS; do out="$out,$RUNS/$1_s$s"; done; echo "${out#,}"; }
python experiment.py --threads "$THREADS" --n-val 300 --out docs/world/experiment \
    --group "warm start (var)=$RUNS/var" \
    --group "var=$(group cont_var)" \
    --group "depthart=$(group cont_depthart)" \
    --group "var, equal time=$(group cont_var_time)"
# Shipped in half precision (11 MB instead of 22: the repository keeps all its weights within 40 MB).
mkdir -p weights
python -c "import torch, depthart as D; src = '$RUNS/cont_depthart_s0/last.safetensors'
D.save_checkpoint('weights/depthart_small.safetensors', D.DepthART.from_checkpoint(src), D.checkpoint_meta(src),
                  dtype=torch.float16)"
python experiment.py --threads "$THREADS" --gallery weights/depthart_small.safetensors --photos ordinal --out docs/world/gallery.png
for c in ramp weights/depthart_tiny.safetensors weights/depthart_small.safetensors; do  # the ordinal check
    python evaluate.py --checkpoint "$c" --dataset ordinal --fit pad --no-progress
done
rm -rf "$PARKED"  # finished: nothing left to resume
