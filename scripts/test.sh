#!/usr/bin/env bash
# The test command: installs what is missing, then runs the whole CPU test suite.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k dicom   # extra arguments go to pytest
set -euo pipefail
# shellcheck source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
python -m pytest -q "$@"
