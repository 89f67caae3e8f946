#!/usr/bin/env bash
# Quick start: set up, import real Fashion-MNIST from the Debian package, train ResNet-18, evaluate on the
# test split, classify the test folder.
#
#   bash scripts/quickstart.sh          # a small real subset (500 images per class, 5 epochs), about a minute on 2 cores after setup
#   bash scripts/quickstart.sh --full   # the full data set (54,000 train / 6,000 val / 10,000 test): the
#                                       # accuracy goal run (>= 0.90 test top-1), about 8 minutes of training on 2 idle cores
#
# Results land in results/quickstart[-full]/; the key comes from KESTREL_KEY (a demo key is used if unset).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
KESTREL=.venv/bin/kestrel
export KESTREL_KEY=${KESTREL_KEY:-quickstart-demo-key}

if [ "${1:-}" = "--full" ]; then
  DATA=data/fashion-mnist
  RESULTS=results/quickstart-full
  IMPORT_ARGS=()
  SPEC=examples/specs/fashion_mnist_resnet18.txt
  echo "quickstart: FULL run (goal: >= 0.90 test accuracy)"
else
  DATA=data/fashion-mnist-500
  RESULTS=results/quickstart
  IMPORT_ARGS=(--per-class 500)
  mkdir -p "$RESULTS"
  SPEC=$RESULTS/spec.txt
  # same model and recipe as the full example, on a 500-image-per-class subset and 5 epochs
  sed -e "s#data/fashion-mnist/#$DATA/#" -e 's/n_epochs: [0-9]*/n_epochs: 5/' \
    examples/specs/fashion_mnist_resnet18.txt > "$SPEC"
  echo "quickstart: SUBSET run (500 real images per class, 5 epochs); --full for the whole data set"
fi

if [ ! -f "$DATA/.complete" ]; then
  rm -rf "$DATA"
  "$KESTREL" dataset import fashion-mnist --out "$DATA" "${IMPORT_ARGS[@]}"
  touch "$DATA/.complete"
fi
"$KESTREL" spec check -e "$SPEC" --task train
start=$(date +%s)
"$KESTREL" train -e "$SPEC" -r "$RESULTS" --log_file "$RESULTS/train.log"
train_s=$(( $(date +%s) - start ))
MODEL=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['final_model'])" "$RESULTS/summary.json")
"$KESTREL" evaluate -e "$SPEC" -m "$MODEL" -r "$RESULTS/evaluate"
"$KESTREL" inference -e "$SPEC" -m "$MODEL" -d "$DATA/test" -r "$RESULTS/inference" -b 64  # -b: 1 by default, as the original
.venv/bin/python - "$RESULTS" "$train_s" <<'PY'
import json, sys
results, seconds = sys.argv[1], int(sys.argv[2])
ev = json.load(open(f"{results}/evaluate/results.json"))
print(f"\nquickstart: test top-1 accuracy {ev['top_1_accuracy']:.4f} on {ev['n_images']} images; "
      f"training took {seconds} s; outputs in {results}/")
PY
