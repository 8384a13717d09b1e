"""Ready-made benchmark scripts: each prints a table and writes JSON (see RESULTS.md)."""
