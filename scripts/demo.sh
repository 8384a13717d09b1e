#!/usr/bin/env bash
# The main job on built-in synthetic data: synth a CT cohort and natural images, pretrain SimCLR on each and
# natural-then-CT, evaluate radnet from each and from scratch (linear and fine-tuned at 10 %, 3 seeds), analyze.
#   bash scripts/demo.sh [OUT_DIR]   # default demo/
set -euo pipefail
# shellcheck source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
tlx demo --out "${1:-demo}"
