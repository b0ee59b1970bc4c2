#!/usr/bin/env bash
# NW-UCLA supervised (cross-view) runs behind docs/supervised.md's table: CTR-GCN with and without
# FR-Head on the joint stream, FR-Head on the other three streams, ST-GCN joint; then the 4-stream
# ensemble. SCHEDULE shortens FR-Head's published one (65 epochs x 5 passes) for a CPU; the table
# says by how much. Two chains run side by side, one thread each.
#   bash experiments/bench/frhead_ucla.sh [out folder]   (needs: python main.py prepare with dataset=nw_ucla ...)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/frhead_ucla}
PY=${PY:-.venv/bin/python}
SCHEDULE=${SCHEDULE:-"epoch_num=8 train_repeat=1 warmup_epochs=1 lr_steps=[6]"}
# EXTRA="input_norm=none aug_rotate=0": the table's rows without FR-Head's NW-UCLA data treatment
EXTRA=${EXTRA:-}
COMMON="frhead_ucla offline=True selection=test val_fraction=0 monitor_unseen=False $SCHEDULE $EXTRA"
mkdir -p "$OUT"
run() {  # name, overrides...
  local name=$1; shift
  [ -f "$OUT/$name/test_scores.npz" ] && return 0
  OMP_NUM_THREADS=1 $PY main.py with $COMMON out_dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
( run ctrgcn_fr_joint modality=joint; run ctrgcn_joint modality=joint fr_head=False;
  run stgcn_joint backbone=stgcn hidden_channels=16 dropout=0.5 fr_head=False modality=joint ) &
( run ctrgcn_fr_bone modality=bone; run ctrgcn_fr_joint_motion modality=joint_motion;
  run ctrgcn_fr_bone_motion modality=bone_motion ) &
wait
$PY main.py ensemble with dataset=nw_ucla offline=True out_dir="$OUT/ensemble" \
  "ensemble_members=['$OUT/ctrgcn_fr_joint','$OUT/ctrgcn_fr_bone','$OUT/ctrgcn_fr_joint_motion','$OUT/ctrgcn_fr_bone_motion']" \
  > "$OUT/ensemble.log" 2>&1
grep -h "test top-1\|ensemble top-1" "$OUT"/*.log
