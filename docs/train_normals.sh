#!/usr/bin/env bash
# The shipped normals model (tiny preset, surface normals of the synthetic world) and the
# DepthART-vs-teacher-forcing experiment for normals, end to end on a CPU; every run resumes where it stopped.
#
#   bash docs/train_normals.sh                    # every run below, then the table, plot and picture
#   VQ_STEPS=2 WARM_STEPS=2 CONT_STEPS=2 SCENES=64 N_VAL=8 N_TRAIN_MEAN=8 THREADS=1 RUNS=/tmp/n DOCS=/tmp/n/docs \
#       WEIGHTS=/tmp/n/w.safetensors bash docs/train_normals.sh      # a smoke test of the whole script
#
# As docs/train_default.sh, with --target normals on --data world (the box rooms have no normals; the world
# renders exact ones). Stage 1 starts from the shipped depth model's VQ-VAE (it already encodes images) and
# learns normal maps beside images; a teacher-forced warm start follows; from it, for seeds 0, 1, 2: teacher
# forcing, DepthART, and teacher forcing for as long as the seed's DepthART run took (equal wall clock).
# Stage 1 runs under BF16 autocast (nearly 2x faster on this CPU; no quality cost in the README's paired check).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
SCENES=${SCENES:-16000}       # training scenes, rendered once into $RUNS/cache (~0.6 GB at 64 px) and read from there
VQ_STEPS=${VQ_STEPS:-1500}
WARM_STEPS=${WARM_STEPS:-1500}
CONT_STEPS=${CONT_STEPS:-300}
CONT_LR=${CONT_LR:-5e-4}
SEEDS=${SEEDS:-"0 1 2"}
N_VAL=${N_VAL:-300}
RUNS=${RUNS:-runs/normals}
DOCS=${DOCS:-docs/normals}
WEIGHTS=${WEIGHTS:-weights/depthart_normals_tiny.safetensors}
VAL_EVERY=$(( WARM_STEPS < 250 ? WARM_STEPS : 250 ))

run() {  # run OUT ARGS...: a training run, resumed if it has a checkpoint (a finished one resumes to its end)
    local out=$1; shift
    local resume=""; [ -f "$out/last.state.pt" ] && resume="--resume"
    python train.py --data world --target normals --preset tiny --batch-size 32 --threads "$THREADS" \
        --train-scenes "$SCENES" --disk-cache "$RUNS/cache" --val-every "$VAL_EVERY" --val-samples 64 \
        --out "$out" $resume "$@"
}

run "$RUNS/vqvae" --stage vqvae --steps "$VQ_STEPS" --lr 1e-3 --amp auto --init-vae weights/depthart_tiny.safetensors
run "$RUNS/var" --stage transformer --objective var --init-vae "$RUNS/vqvae/last.safetensors" --steps "$WARM_STEPS" --lr 1e-3

for seed in $SEEDS; do
    run "$RUNS/cont_var_s$seed" --stage transformer --objective var --init "$RUNS/var/last.safetensors" \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    run "$RUNS/cont_depthart_s$seed" --stage transformer --objective depthart --init "$RUNS/var/last.safetensors" \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    # Equal wall clock: as many teacher-forced steps as fit in the DepthART run's training time.
    equal=$(python -c "from pathlib import Path; from experiment import run_info; t = lambda r: run_info(Path(r))['train_seconds']
print(max(1, round($CONT_STEPS * t('$RUNS/cont_depthart_s$seed') / t('$RUNS/cont_var_s$seed'))))")
    run "$RUNS/cont_var_time_s$seed" --stage transformer --objective var --init "$RUNS/var/last.safetensors" \
        --steps "$equal" --lr "$CONT_LR" --seed "$seed"
done

group() { local out=""; for s in $SEEDS; do out="$out,$RUNS/$1_s$s"; done; echo "${out#,}"; }
mkdir -p "$DOCS" "$(dirname "$WEIGHTS")"
python experiment.py --threads "$THREADS" --n-val "$N_VAL" --n-train-mean "${N_TRAIN_MEAN:-500}" --out "$DOCS/experiment" \
    --group "warm start (var)=$RUNS/var" \
    --group "var=$(group cont_var)" \
    --group "depthart=$(group cont_depthart)" \
    --group "var, equal time=$(group cont_var_time)"
cp "$RUNS/cont_depthart_s0/last.safetensors" "$WEIGHTS"
python experiment.py --threads "$THREADS" --gallery "$WEIGHTS" --out "$DOCS/gallery.png"
