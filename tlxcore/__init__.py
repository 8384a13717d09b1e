"""What every tlx package needs and none of them owns: atomic writes, the one-writer lock of an
output folder, progress reporting, the quiet switch, worker counts and the tool version.

It depends on nothing of tlx, so `datakit`, `trainer`, `analysis` and `cli` may all import it
without importing each other (DESIGN.md: the packages talk only through the two formats).
"""
