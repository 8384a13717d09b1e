"""Reading tlx datasets: the dataset contract, per-rank sample plans, augmentations, the two loaders."""
