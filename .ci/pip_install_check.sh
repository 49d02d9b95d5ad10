#!/usr/bin/env bash
# `pip install .` as a user would, into a clean venv: the pins as constraints, nothing else preinstalled. Then the
# entry point's commands load, and a tiny stage trains on drawn latents through `microdit train`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "pip install . into a clean venv (about 7 GB; minutes)"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check -c envs/requirements.txt . > "$WORK/pip.log" 2>&1 \
    || { tail -40 "$WORK/pip.log"; exit 1; }
cd "$WORK"  # away from the checkout: the installed package, not the source tree, must be what runs
for command in train precompute generate fid; do
    venv/bin/microdit "$command" --help > /dev/null
done
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 venv/bin/microdit train \
    --config "$OLDPWD/config/stages/tiny/stage1.yaml" --out "$WORK/stage1" --set steps=4 --set launch.cluster=debug
test -s "$WORK/stage1/final.safetensors" && test -s "$WORK/stage1/train_stats.json"
echo "pip install .: microdit train/precompute/generate/fid load, and a tiny stage trained"
