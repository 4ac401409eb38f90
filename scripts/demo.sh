#!/usr/bin/env bash
# The main job, end to end on a synthetic scene: synthesize → COG → inspect → picture → ask a question.
#
#   MODEL=<hub id or local folder>  ask with a real checkpoint (needs it cached locally or a network);
#                                   without MODEL the demo builds a tiny RANDOM model: its answer is meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-8192}
OUT=${OUT:-demo-output}
mkdir -p "$OUT"
CLI=.venv/bin/lrs-vqa

$CLI synth "$OUT/scene.tif" --size "$SIZE" --seed 7
$CLI cog "$OUT/scene.tif" "$OUT/scene_cog.tif" --overwrite
$CLI inspect "$OUT/scene_cog.tif"
$CLI preview "$OUT/scene_cog.tif" "$OUT/pyramid.png" --objects "$OUT/scene.json"
echo "overview with the pyramid's tile grids and the planted objects: $OUT/pyramid.png"

if [ -z "${MODEL:-}" ]; then
  MODEL="$OUT/tiny-llava-onevision"
  [ -d "$MODEL" ] || $CLI make-tiny-model "$MODEL" --family llava_onevision
fi
$CLI ask "$OUT/scene_cog.tif" "How many cars are in the image?" --model "$MODEL" \
  --evidence "$OUT/evidence.geojson" --heatmap "$OUT/heatmap.png"
echo "tiles the model read, as GeoJSON (open it in QGIS): $OUT/evidence.geojson"
echo "where the question pointed (coarse-level scores, zoomed tiles outlined): $OUT/heatmap.png"
