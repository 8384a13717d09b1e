#!/usr/bin/env bash
# The test command: installs what is missing, then runs the whole CPU test suite.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k dicom   # extra arguments go to pytest
set -euo pipefail
# shellcheck source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
# The suite installs DALI and webdataset: their tests must run, not skip (tests/fixtures/optional.py).
TLX_REQUIRE_OPTIONAL=1 python -m pytest -q "$@"
