"""Test-wide settings: progress bars off, a fixed pseudonym secret, CPU only."""
import os

os.environ.setdefault("TLX_QUIET", "1")  # every rich progress bar in tlx honours this
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
