#!/usr/bin/env bash
# The README's picture (docs/quickstart-table3.png): the quickstart report's Table 3 page at smoke scale, as the
# report wrote it to reports/figures/. Run after `tox -e quickstart`:
#     tools/docs_picture.sh [FIGURES_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-reports/figures}/table3_cifar100_resnet20_2468__smoke.png"
if [ ! -f "$src" ]; then
    echo "error: $src not found: run \`tox -e quickstart\` first" >&2
    exit 2
fi
cp "$src" docs/quickstart-table3.png
echo "docs/quickstart-table3.png <- $src"
