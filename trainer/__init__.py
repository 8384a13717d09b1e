"""trainer: models, shard loaders (DALI on GPU, torch on CPU), SimCLR pretraining and downstream tasks."""
