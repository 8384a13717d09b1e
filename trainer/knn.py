"""kNN probe: does the encoder separate the val split's labels? (Wu et al. 2018's weighted kNN.)

    from trainer.knn import knn_probe
    acc = knn_probe(encoder, dataset, aug, device, bank=4096, queries=1024, k=20)   # None without labels

Features are the encoder's pooled output (before the projector), L2-normalised, of the
whole slice (normalised like training, resized to the training size, no augmentation):
a bank of training samples with their labels, and queries from the val split. A query
takes the k most similar bank entries; each votes for its label with weight
exp(similarity / 0.07). Samples are drawn with a fixed seed so successive evaluations
are comparable. Runs on the calling rank only.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from datakit.read import SampleReader, TlxDataset
from trainer.data.augment import AugmentConfig, scale_input, to_unit
from trainer.errors import TrainerError


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, t: float = 0.07) -> torch.Tensor:
    """Predicted labels of `queries` (rows L2-normalised) from the labelled `bank`."""
    sim = queries @ bank.T
    top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[idx], torch.exp(top / t))
    return votes.argmax(1)


@torch.no_grad()
def embed(encoder: torch.nn.Module, dataset: TlxDataset, split: str, ids: np.ndarray, aug: AugmentConfig,
          device: torch.device, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    image_ext, spec = dataset.member("image")
    aug = replace(aug, rgb=spec.codec == "jpeg")  # JPEG datasets are RGB (and their images differ in size)
    label_ext, _ = dataset.member("label")
    table, reader = dataset.sample_table(split), SampleReader(dataset)
    feats, labels = [], []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        x = torch.stack([scale_input(F.interpolate(torch.from_numpy(to_unit(reader.read(table, int(i), image_ext),
                                                                            aug))[None],
                                                   size=(aug.image_size,) * 2, mode="bilinear", antialias=True,
                                                   align_corners=False)[0], aug) for i in chunk])
        feats.append(F.normalize(encoder(x.to(device).expand(-1, 3, -1, -1)).float(), dim=1))
        labels.append(torch.tensor([reader.read(table, int(i), label_ext) for i in chunk], device=device))
    reader.close()
    return torch.cat(feats), torch.cat(labels)


def knn_probe(encoder: torch.nn.Module, dataset: TlxDataset, aug: AugmentConfig, device: torch.device,
              bank: int = 4096, queries: int = 1024, k: int = 20, seed: int = 0) -> float:
    """Top-1 kNN accuracy of val samples against a bank of train samples; TrainerError without labels."""
    dataset.member("label")
    if dataset.num_samples("val") == 0:
        raise TrainerError(f"{dataset.root}: no val samples for the kNN probe")
    rng = np.random.default_rng(seed)
    pick = lambda n, cap: np.sort(rng.permutation(n)[:cap])  # noqa: E731
    was_training = encoder.training
    encoder.eval()
    try:
        bank_x, bank_y = embed(encoder, dataset, "train", pick(dataset.num_samples("train"), bank), aug, device)
        q_x, q_y = embed(encoder, dataset, "val", pick(dataset.num_samples("val"), queries), aug, device)
    finally:
        encoder.train(was_training)
    pred = knn_predict(bank_x, bank_y, q_x, max(len(dataset.classes), int(bank_y.max()) + 1), k)
    return float((pred == q_y).float().mean())
