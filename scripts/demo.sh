#!/usr/bin/env bash
# The main job, end to end on the synthetic world: write a scene (COG) with its questions → inspect → picture
# → ask a question with the shipped world model and print the ground truth beside its answer.
#
#   MODEL=<hub id or local folder>  ask a real checkpoint instead (needs it cached locally or a network);
#                                   the default, `world`, is the project's synthetic-world model (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-8192}
SEED=${SEED:-7}
OUT=${OUT:-demo-output}
MODEL=${MODEL:-world}
mkdir -p "$OUT"
CLI=.venv/bin/lrs-vqa

$CLI world-bench "$OUT/world" --scenes 1 --sizes "$SIZE" --seed "$SEED" --overwrite
SCENE=$(ls "$OUT"/world/LRS_VQA/image/*.tif)
SIDECAR="$OUT/world/LRS_VQA/scenes/$(basename "${SCENE%.tif}").json"
$CLI inspect "$SCENE"
$CLI preview "$SCENE" "$OUT/pyramid.png" --objects "$SIDECAR"
echo "overview with the pyramid's tile grids and the scene's objects: $OUT/pyramid.png"

# The demo question: the scene's first "object color" question (a needle tens of pixels wide).
{ read -r QUESTION; read -r TRUTH; read -r BOX; } < <(.venv/bin/python - "$OUT/world/LRS_VQA_merged.jsonl" <<'PY'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
row = next(r for r in rows if r["category"] == "object color")
print(row["text"].split("\n")[0])
print(row["ground_truth"])
print(",".join(str(v) for v in row["target_boxes"][0]))
PY
)
echo "question: $QUESTION"
# The LRS-VQA prompt suffix, as the benchmark (and the world model's training) asks every question.
$CLI ask "$SCENE" "$QUESTION"$'\n'" Answer the question using a single word or phrase." --model "$MODEL" --evidence "$OUT/evidence.geojson" --heatmap "$OUT/heatmap.png"
echo "ground truth: $TRUTH  (above: the coarse-to-fine answer)"
echo "the same question shown the native tiles under the object's true box (the oracle, --strategy region):"
$CLI ask "$SCENE" "$QUESTION"$'\n'" Answer the question using a single word or phrase." --model "$MODEL" \
  --strategy region --box "$BOX"
echo "tiles the model read, as GeoJSON (open it in QGIS): $OUT/evidence.geojson"
echo "where the question pointed (coarse-level scores, zoomed tiles outlined): $OUT/heatmap.png"
