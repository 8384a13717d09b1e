#!/usr/bin/env bash
# The test command: installs what is missing, lints with ruff (pyproject's [tool.ruff]), then runs
# the whole CPU test suite.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k dicom   # extra arguments go to pytest
set -euo pipefail
# shellcheck source=install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
# Lint first: a style error fails in seconds, before the minutes of the suite.
python -m ruff check .
# The suite installs DALI and webdataset: their tests must run, not skip (tests/fixtures/optional.py).
TLX_REQUIRE_OPTIONAL=1 python -m pytest -q "$@"
