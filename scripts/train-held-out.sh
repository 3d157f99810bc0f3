#!/usr/bin/env bash
# The held-out models of the unseen-tissue protocol (bench/protocols/unseen_tissue.yaml): the shipped
# model's two-stage recipe on the corpus without the test slides (default), or without the dev and the
# test slides (`dev`: the model that chooses the embedding's share on dev). About 1.5 h (test) or 1 h
# (dev) on 2 cores. Re-running it continues: a built corpus and a finished stage are skipped, a stopped
# stage resumes from its last checkpoint.
#   bash scripts/train-held-out.sh        # -> runs/held-out-continual/model
#   bash scripts/train-held-out.sh dev    # -> runs/dev-held-out-continual/model
#   python bench/generalize.py --set test --model runs/held-out-continual/model
#   python bench/generalize.py --set dev --model runs/dev-held-out-continual/model
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
case "${1:-test}" in
  test) name=held-out; corpus=corpus_held_out ;;
  dev) name=dev-held-out; corpus=corpus_dev_held_out ;;
  *) echo "usage: bash scripts/train-held-out.sh [test|dev]" >&2; exit 2 ;;
esac
spgpt() { $PY -m spgpt_core.cli "$@"; }
[ -f $corpus/corpus.json ] || { rm -rf $corpus; spgpt corpus build configs/$name-corpus.yaml --out $corpus; }
stage() {  # config, run dir
  [ -d "$2/model" ] && return 0
  if [ -e "$2/checkpoints/latest" ]; then spgpt pretrain --config "$1" --resume; else spgpt pretrain --config "$1"; fi
}
stage configs/$name-model.yaml runs/$name-model
stage configs/$name-continual.yaml runs/$name-continual
echo "$name model: runs/$name-continual/model"
