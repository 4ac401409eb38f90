#!/usr/bin/env bash
# The main job, end to end on a synthetic scene: synthesize → convert to COG → inspect → stream tiles.
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
