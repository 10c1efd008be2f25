"""A small one-hidden-layer perceptron head on pooled segmentation features, and ensembles of them.

The segmentation-feature classifier (:mod:`CovidCTLib.models.training.seg_feature_train`) scores a slice from
2544 pooled statistics of the frozen lung and infection networks. A linear head stops at a grouped 5-fold CV AUC
just under 0.90; a ReLU layer of a few dozen units lets the head combine the statistics, at no measurable
run-time cost. :func:`fit_mlp` trains one member (seeded Adam on mini-batches of standardised features, L2 on
the weights, seeded Glorot initialisation: a rerun on the same machine gives the same weights);
:class:`HeadEnsemble` is the mean of the members' logits. The standardisation is folded into the first layer,
so a member works on raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MLPHead:
    """``logit = relu(x @ w1 + b1) @ w2 + b2`` on raw (unstandardised) features; ``w1`` is (features, hidden)."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(np.asarray(x, dtype=np.float64) @ self.w1 + self.b1, 0.0)
        return h @ self.w2 + self.b2


@dataclass
class HeadEnsemble:
    """Members whose logits are averaged (the members of every cross-validation fold, several seeds each)."""

    members: list[MLPHead]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.logits(x) for m in self.members], axis=0)

    def stacked(self) -> dict[str, np.ndarray]:
        """Arrays of all members: ``w1`` (E, F, H), ``b1`` (E, H), ``w2`` (E, H), ``b2`` (E,)."""
        return {
            "w1": np.stack([m.w1 for m in self.members]),
            "b1": np.stack([m.b1 for m in self.members]),
            "w2": np.stack([m.w2 for m in self.members]),
            "b2": np.array([m.b2 for m in self.members]),
        }


def _glorot(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    bound = float(np.sqrt(6.0 / (rows + cols)))
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1) * bound


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    alpha: float,
    hidden: int = 32,
    seed: int = 0,
    weights: np.ndarray | None = None,
    epochs: int = 150,
    batch: int = 200,
    lr: float = 1e-3,
) -> MLPHead:
    """One seeded member: Adam on shuffled mini-batches of standardised features, each step minimising the
    batch's weighted mean log-loss + ``alpha * (||W1||^2 + ||W2||^2) / (2 * batch)`` (biases free), for a fixed
    number of epochs; returned with the standardisation folded in. Same seed and rows, same weights."""
    x = np.asarray(x, dtype=np.float64)
    n, f = x.shape
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    wt = torch.from_numpy((np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)).astype(np.float32))
    wt = wt * (n / wt.sum())  # mean weight 1: a batch's loss is its weighted mean
    gen = torch.Generator().manual_seed(int(seed))
    w1 = _glorot(f, hidden, gen).float().requires_grad_(True)
    w2 = _glorot(hidden, 1, gen)[:, 0].float().requires_grad_(True)
    b1 = torch.zeros(hidden, requires_grad=True)
    b2 = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            z = torch.relu(xs[idx] @ w1 + b1) @ w2 + b2
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt[idx], weight=wt[idx])
            loss = loss + alpha * ((w1 * w1).sum() + (w2 * w2).sum()) / (2 * len(idx))
            loss.backward()
            opt.step()
    w1n, b1n = w1.detach().double().numpy(), b1.detach().double().numpy()
    return MLPHead(
        w1=w1n / std[:, None],
        b1=b1n - (mean / std) @ w1n,
        w2=w2.detach().double().numpy(),
        b2=float(b2.detach()),
    )


def fit_ensemble(
    x: np.ndarray,
    y: np.ndarray,
    alpha: float,
    hidden: int,
    seeds: tuple[int, ...],
    weights: np.ndarray | None = None,
) -> HeadEnsemble:
    """Members of the given seeds on the same rows."""
    return HeadEnsemble([fit_mlp(x, y, alpha, hidden, s, weights) for s in seeds])
