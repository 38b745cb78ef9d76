#!/usr/bin/env bash
# Sim-to-real, one measured change at a time (issue: the default model must see depth in real photographs).
# Every run starts from the log-depth target's run of docs/train_targets.sh (runs/targets/log: the shipped small
# model, 180 teacher-forced steps with Config.depth_norm = log), trains the transformer for $STEPS more, and is
# scored on the real validation set (realset.py) under both protocols as soon as it ends:
#
#   control   the world's own family mix, 30% subject scenes (what train_targets.sh trained on)
#   mix       the families reweighted toward the depth ranges of real photographs (rooms, tabletops, the old box
#             rooms; few corridors and streets): train.py --families $MIX, the same 30% subject scenes
#   default   the better of the two, continued with the DepthART objective for $LONG_STEPS (the candidate default)
#   textures  with TEX=DIR (python realset.py textures --out DIR ...): the control's run on a world whose surfaces
#             wear those real photographs (train.py --textures), its own disk cache
#
#   REAL=/path/to/realset bash docs/train_real.sh      # resumable: run it again to continue
#
# Scores land in docs/real_runs/NAME.{txt,json}; weights stay in runs/real/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
STEPS=${STEPS:-400}
LONG_STEPS=${LONG_STEPS:-2000}
MIX=${MIX:-"room=0.35,tabletop=0.35,box_room=0.15,corridor=0.1,outdoor=0.05"}
RUNS=${RUNS:-runs/real}
REAL=${REAL:?set REAL to the folder realset.py built}
OUT=docs/real_runs
mkdir -p "$RUNS" "$OUT"

[ -f runs/targets/log/last.safetensors ] || NORMS=log REAL="$REAL" bash docs/train_targets.sh
INIT=runs/targets/log/last.safetensors

reached() { [ -f "$1/last.safetensors" ] && python -c "import sys, zoo as Z
sys.exit(Z.checkpoint_meta('$1/last.safetensors')['step'] < $2)"; }

run() {  # run NAME STEPS INIT OBJECTIVE [train.py flags...]
    local name=$1 steps=$2 init=$3 objective=$4; shift 4
    local out=$RUNS/$name
    if ! reached "$out" "$steps"; then
        local resume=""; [ -f "$out/last.state.pt" ] && resume="--resume" && init=""
        python train.py --data world --preset small --batch-size 32 --threads "$THREADS" --train-scenes 8000 \
            --disk-cache "$RUNS/cache" --subjects 0.3 --stage transformer --objective "$objective" \
            ${init:+--init "$init"} --depth-norm log --steps "$steps" --lr 5e-4 \
            --val-every 200 --val-samples 32 --save-every 50 --out "$out" $resume "$@"
    fi
    if [ ! -f "$OUT/$name.json" ]; then
        python evaluate.py --checkpoint "$out/last.safetensors" --dataset real --data-root "$REAL" \
            --out "$OUT/$name" > "$OUT/$name.txt"
    fi
}
run control "$STEPS" "$INIT" var
if [ -n "${TEX:-}" ]; then run textures "$STEPS" "$INIT" var --textures "$TEX"; fi
run mix "$STEPS" "$INIT" var --families "$MIX"
# The better of the two on the sum of both protocols' means carries on.
best=$(python -c "
import json
s = {n: sum(json.load(open('$OUT/' + n + '.json'))['means']['model'][p]['all metric']['abs_rel'] for p in ('depthart', 'affine'))
     for n in ('control', 'mix')}
print(min(s, key=s.get))")
flags=(); [ "$best" = mix ] && flags=(--families "$MIX")
echo "carrying on from $best"
run default "$LONG_STEPS" "$RUNS/$best/last.safetensors" depthart "${flags[@]}"
