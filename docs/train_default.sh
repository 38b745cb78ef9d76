#!/usr/bin/env bash
# The shipped default model and the DepthART-vs-teacher-forcing experiment, end to end on a CPU.
#
#   bash docs/train_default.sh            # every run below, then the table, plot and picture in docs/
#
# Stage 1 and the teacher-forced warm start are one run each; from the warm start, both objectives
# continue for the same steps, data and seeds. A third group continues with teacher forcing for as long
# as a DepthART run took (wall clock, measured on the seed's runs here), because a DepthART step costs
# a rollout more. Every run resumes where it stopped if this script is started again.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
CONT_STEPS=${CONT_STEPS:-300}
CONT_LR=${CONT_LR:-5e-4}
SEEDS=${SEEDS:-"0 1 2"}

run() {  # run OUT ARGS...: a training run, resumed if it has a checkpoint (a finished one resumes to its end)
    local out=$1; shift
    local resume=""; [ -f "$out/last.state.pt" ] && resume="--resume"
    python train.py --data synthetic --preset tiny --batch-size 32 --threads "$THREADS" --out "$out" $resume "$@"
}

run runs/vqvae --stage vqvae --steps 1500 --lr 1e-3
run runs/var --stage transformer --objective var --init-vae runs/vqvae/last.safetensors --steps 1500 --lr 1e-3

for seed in $SEEDS; do
    run runs/cont_var_s$seed --stage transformer --objective var --init runs/var/last.safetensors \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    run runs/cont_depthart_s$seed --stage transformer --objective depthart --init runs/var/last.safetensors \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    # Equal wall clock: as many teacher-forced steps as fit in the DepthART run's training time.
    equal=$(python -c "from pathlib import Path; from experiment import run_info; t = lambda r: run_info(Path(r))['train_seconds']
print(round($CONT_STEPS * t('runs/cont_depthart_s$seed') / t('runs/cont_var_s$seed')))")
    run runs/cont_var_time_s$seed --stage transformer --objective var --init runs/var/last.safetensors \
        --steps "$equal" --lr "$CONT_LR" --seed "$seed"
done

group() { local out=""; for s in $SEEDS; do out="$out,runs/$1_s$s"; done; echo "${out#,}"; }
python experiment.py --threads "$THREADS" --n-val 300 --out docs/experiment \
    --group "warm start (var)=runs/var" \
    --group "var=$(group cont_var)" \
    --group "depthart=$(group cont_depthart)" \
    --group "var, equal time=$(group cont_var_time)"
mkdir -p weights
cp runs/cont_depthart_s0/last.safetensors weights/depthart_tiny.safetensors
python experiment.py --threads "$THREADS" --gallery weights/depthart_tiny.safetensors --out docs/gallery.png
