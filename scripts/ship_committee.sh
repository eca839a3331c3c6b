#!/usr/bin/env bash
# Make a shipped committee (docs/models.md, "Committees") from members trained by
#   equiformer-train models/NAME/train.yaml --set run.seed=K --set data.split_seed=0 \
#       --output-dir runs/committee/NAME/member-K          (K = 1, 2, 3)
# Member 0 is the shipped model itself (seed 0, same config and split). Writes
# models/NAME/committee/member-K.ckpt.pt (training state stripped), models/NAME/committee.pt
# (float32) and the test-set evaluation models/NAME/committee/{eval_test.json,plots/} (the
# mean's and each member's errors, and the force deviation's calibration).
# Usage: scripts/ship_committee.sh cu|aspirin
set -euo pipefail
name=${1:?usage: scripts/ship_committee.sh cu|aspirin}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case $name in
  cu) test=data/cu_eam_test.xyz ;;
  aspirin) test=data/aspirin_xtb_test.xyz ;;
  *) echo "unknown model $name (cu or aspirin)" >&2; exit 2 ;;
esac
dest=models/$name/committee
mkdir -p "$dest"
members=(models/$name/model.ckpt.pt)
for k in 1 2 3; do
  src=runs/committee/$name/member-$k/best.pt
  .venv/bin/python - "$src" "$dest/member-$k.ckpt.pt" <<'PY'
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
ckpt["training"] = None  # no resume state: weights, normalisation, metadata
torch.save(ckpt, sys.argv[2])
PY
  members+=("$dest/member-$k.ckpt.pt")
done
.venv/bin/equiformer-export "${members[@]}" models/$name/committee.pt --dtype float32 --overwrite
.venv/bin/equiformer-eval models/$name/committee.pt "$test" --json "$dest/eval_test.json" --plots "$dest/plots" \
  --no-progress
