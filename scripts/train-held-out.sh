#!/usr/bin/env bash
# The held-out model of the unseen-tissue protocol (bench/protocols/unseen_tissue.yaml): the shipped
# model's two-stage recipe on the corpus without the test slides. About 1.5 h on 2 cores. Re-running
# it continues: a built corpus and a finished stage are skipped, a stopped stage resumes from its last
# checkpoint.
#   bash scripts/train-held-out.sh
#   python bench/generalize.py --set test --model runs/held-out-continual/model
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
spgpt() { $PY -m spgpt_core.cli "$@"; }
[ -f corpus_held_out/corpus.json ] || { rm -rf corpus_held_out; spgpt corpus build configs/held-out-corpus.yaml --out corpus_held_out; }
stage() {  # config, run dir
  [ -d "$2/model" ] && return 0
  if [ -e "$2/checkpoints/latest" ]; then spgpt pretrain --config "$1" --resume; else spgpt pretrain --config "$1"; fi
}
stage configs/held-out-model.yaml runs/held-out-model
stage configs/held-out-continual.yaml runs/held-out-continual
echo "held-out model: runs/held-out-continual/model"
