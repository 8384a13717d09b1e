"""The `tlx` command line: a thin click layer over datakit, trainer and analysis."""
