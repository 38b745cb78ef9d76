#!/usr/bin/env bash
# The default model for real photographs (preset `small`, the `world` synthetic scenes) and the
# DepthART-vs-teacher-forcing experiment on it, end to end on a CPU; every run resumes where it stopped.
#
#   bash docs/train_world.sh            # picks up where the last session stopped
#
# Training spans sessions: at the end of one, `bash docs/train_world.sh --park` stops the running stage
# (SIGTERM saves it) and copies what the rest needs to weights/resume/ for committing; the next session's
# first call copies it back into runs/ and resumes exactly. Every finished run is scored on the held-out
# scenes as soon as it ends (experiment.py --score keeps scores_300.json beside it), so that a finished run
# nobody trains from any more parks as its logs and scores, without its 22 MB of weights.
# Order: stage 1 (VQ-VAE, BF16 autocast), a teacher-forced warm start, then from the warm start for
# seeds 0, 1, 2: DepthART, teacher forcing, and teacher forcing for DepthART's wall-clock time; the experiment;
# the shipped model's longer DepthART run (with subject scenes); its gallery and the ordinal check.
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
SHIP_STEPS=${SHIP_STEPS:-1800}  # the shipped model's DepthART steps after its 900 of the experiment
SUBJECTS=${SUBJECTS:-0.3}       # ... on the world with this share of subject scenes (train.py --subjects)
RUNS=runs/world
PARKED=weights/resume

N_VAL=${N_VAL:-300}  # held-out scenes of the experiment

steps_of() { python -c "import json; print(json.load(open('$1/args.json'))['steps'])"; }
finished() {  # finished OUT STEPS: OUT has reached STEPS (its checkpoint says so, or, parked without one, its log)
    if [ -f "$1/last.safetensors" ]; then
        python -c "import sys, zoo as Z; sys.exit(Z.checkpoint_meta('$1/last.safetensors')['step'] < $2)"
    else
        [ -f "$1/metrics.jsonl" ] && python -c "import sys; from pathlib import Path; from experiment import run_info
sys.exit(run_info(Path('$1')).get('steps', 0) < $2)"
    fi
}
needs_weights() {  # needs_weights DIR: a run that is still trained or read keeps its weights when parked
    local d=$1 n; n=$(basename "$1")
    case $n in
        var) return 0 ;;  # every continuation starts from the warm start
        vqvae) ! { [ -f "$RUNS/var/args.json" ] && finished "$RUNS/var" "$(steps_of "$RUNS/var")"; }; return ;;  # var starts from it
    esac
    finished "$d" "$(steps_of "$d")" || return 0  # it goes on
    if [[ $n == cont_var_s* ]]; then  # the equal-time run extends a copy of it
        local t=$RUNS/cont_var_time_${n#cont_var_}
        [ -f "$t/args.json" ] && finished "$t" "$(steps_of "$t")" || return 0
    fi
    python -c "import sys; from pathlib import Path; import experiment as E; sys.exit(E.scored(Path('$d'), $N_VAL) is None)" \
        || return 0  # not scored yet: the experiment reads its weights
    return 1
}

if [ "${1:-}" = "--park" ]; then  # stop the stage that is running (it saves on SIGTERM) and keep what goes on
    for pid in $(pgrep -f "bash docs/train_world.sh" || true); do  # first the script, lest it start the next stage
        [ "$pid" = $$ ] || kill -TERM "$pid" 2>/dev/null || true
    done
    pkill -TERM -f "train.py --data world --preset small" || true  # not a normals run (train_normals.sh)
    pkill -TERM -f "experiment.py --threads [0-9]* --n-val $N_VAL --score" || true  # unscored runs keep their weights
    while pgrep -f "train.py --data world --preset small" >/dev/null; do sleep 2; done
    rm -rf "$PARKED"; mkdir -p "$PARKED"
    for d in "$RUNS"/*/; do
        d=${d%/}; [ -f "$d/args.json" ] || continue
        mkdir -p "$PARKED/$(basename "$d")"
        cp "$d"/args.json "$PARKED/$(basename "$d")/"
        for f in metrics.jsonl scores_$N_VAL.json; do [ -f "$d/$f" ] && cp "$d/$f" "$PARKED/$(basename "$d")/"; done
        if [ -f "$d/last.safetensors" ] && needs_weights "$d"; then
            cp "$d"/last.safetensors "$PARKED/$(basename "$d")/"
            # The optimizer state where a run may go on: unfinished runs, and teacher forcing kept for its extension.
            if [[ "$(basename "$d")" == cont_var_s* ]] || ! finished "$d" "$(steps_of "$d")"; then
                [ ! -f "$d/last.state.pt" ] || cp "$d"/last.state.pt "$PARKED/$(basename "$d")/"
            fi
        fi
    done
    du -sh "$PARKED"/*; exit 0
fi
if [ -d "$PARKED" ] && [ ! -d "$RUNS" ]; then mkdir -p "$RUNS" && cp -r "$PARKED"/. "$RUNS"/; fi

run() {  # run OUT ARGS...: a training run, resumed if it has a checkpoint, skipped if it is finished
    local out=$1; shift
    local steps; steps=$(printf '%s\n' "$@" | grep -A1 -x -- --steps | tail -n1)
    if finished "$out" "$steps"; then
        echo "$out: finished ($steps steps)"
    else
        local resume=""; [ -f "$out/last.state.pt" ] && resume="--resume"
        python train.py --data world --preset small --batch-size 32 --threads "$THREADS" --workers "$WORKERS" \
            --train-scenes "$SCENES" --disk-cache $RUNS/cache --val-every 250 --val-samples 64 --save-every 50 \
            --out "$out" $resume "$@"
        # A run stopped by a signal saves and exits 0: the next stage must not start from it.
        finished "$out" "$steps" || { echo "$out stopped before step $steps: run this script again to continue"; exit 0; }
    fi
    if printf '%s\n' "$@" | grep -qx transformer; then  # scored once, while its weights are here
        python experiment.py --threads "$THREADS" --n-val $N_VAL --score "$out"
    fi
}
ship() {  # ship SRC: the default model, stored in half precision (11 MB instead of 22: all weights within 40 MB)
    [ -f "$1" ] || return 0  # parked without its weights: shipped when it finished
    mkdir -p weights
    python -c "import torch, zoo as Z; src = '$1'
Z.save_checkpoint('weights/depthart_small.safetensors', Z.load(src), Z.checkpoint_meta(src), dtype=torch.float16)"
}

run $RUNS/vqvae --stage vqvae --steps "$VQ_STEPS" --lr 1e-3 --amp auto
run $RUNS/var --stage transformer --objective var --init-vae $RUNS/vqvae/last.safetensors --steps "$WARM_STEPS" --lr 1e-3

for seed in $SEEDS; do
    # DepthART first: parked after it (scored, shipped), a seed leaves no weights behind, and the teacher-forcing
    # run, whose optimizer state its equal-time extension needs, is followed by that extension at once.
    run $RUNS/cont_depthart_s$seed --stage transformer --objective depthart --init $RUNS/var/last.safetensors \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    # The first seed's DepthART run is the default model: shipped now, so that parking can leave its weights behind.
    [ "$seed" != "${SEEDS%% *}" ] || ship $RUNS/cont_depthart_s$seed/last.safetensors
    run $RUNS/cont_var_s$seed --stage transformer --objective var --init $RUNS/var/last.safetensors \
        --steps "$CONT_STEPS" --lr "$CONT_LR" --seed "$seed"
    # Equal wall clock: as many teacher-forced steps as fit in the DepthART run's training time. Batches and
    # learning rate depend on the step alone, not on --steps (tests/test_train.py checks it), so the seed's
    # teacher-forcing run, copied and resumed to that many steps, is that run without repeating its first steps.
    if [ ! -d $RUNS/cont_var_time_s$seed ]; then
        cp -r $RUNS/cont_var_s$seed $RUNS/cont_var_time_s$seed.tmp && rm -f $RUNS/cont_var_time_s$seed.tmp/scores_*.json
        mv $RUNS/cont_var_time_s$seed.tmp $RUNS/cont_var_time_s$seed
    fi
    equal=$(python -c "from pathlib import Path; from experiment import run_info; t = lambda r: run_info(Path(r))['train_seconds']
print(round($CONT_STEPS * t('$RUNS/cont_depthart_s$seed') / t('$RUNS/cont_var_s$seed')))")
    run $RUNS/cont_var_time_s$seed --stage transformer --objective var --init $RUNS/var/last.safetensors \
        --steps "$equal" --lr "$CONT_LR" --seed "$seed"
done

group() { local out=""; for s in $SEEDS; do out="$out,$RUNS/$1_s$s"; done; echo "${out#,}"; }
python experiment.py --threads "$THREADS" --n-val $N_VAL --out docs/world/experiment \
    --group "warm start (var)=$RUNS/var" \
    --group "var=$(group cont_var)" \
    --group "depthart=$(group cont_depthart)" \
    --group "var, equal time=$(group cont_var_time)"
# The shipped model trains on: DepthART for SHIP_STEPS more steps from the first seed's DepthART run (its shipped
# weights, a fresh optimizer, another order of scenes). After 900 steps it had 0.53 of the best trivial predictor's
# AbsRel on the held-out scenes (0.247 against the ramp's 0.461); the default model should have at most half.
# It also ordered the ordinal check's photographs worse than the ramp prior (WHDR 0.414 against 0.309): the world's
# cameras look across rooms and down streets, so it learned "the centre is far", where photographs centre what is
# near. So these steps see SUBJECTS of subject scenes (a person or an object in front of a room or a street; their
# own training-scene cache); it is still scored on the world's own held-out scenes.
run $RUNS/ship --stage transformer --objective depthart --init weights/depthart_small.safetensors \
    --steps "$SHIP_STEPS" --lr "$CONT_LR" --seed 3 --subjects "$SUBJECTS"
ship $RUNS/ship/last.safetensors
python experiment.py --threads "$THREADS" --gallery weights/depthart_small.safetensors --photos ordinal --out docs/world/gallery.png
for c in ramp weights/depthart_tiny.safetensors weights/depthart_small.safetensors; do  # the ordinal check
    python evaluate.py --checkpoint "$c" --dataset ordinal --fit pad --no-progress
done
rm -rf "$PARKED"  # finished: nothing left to resume
