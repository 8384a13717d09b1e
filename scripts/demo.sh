#!/usr/bin/env bash
# The main job on built-in synthetic data: synth a CT cohort, shard it, pretrain SimCLR a few steps,
# fine-tune (from the checkpoint and from scratch, two seeds each), analyze.
#   bash scripts/demo.sh [OUT_DIR]   # default demo/
set -euo pipefail
# shellcheck source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
tlx demo --out "${1:-demo}"
