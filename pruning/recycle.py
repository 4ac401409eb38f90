"""SparseVLM's token recycling (reference card): the top tokens are kept, and the best of the dropped ones are
clustered by density peaks, each cluster living on as its centre's row with the cluster's mean state. Shared
by SparseVLM and AdaptInfer (``recycle=true``)."""

from __future__ import annotations

import math

import torch

from lrs_vqa.engine.decoder import LayerView, Selection
from pruning.base import selection_keeping, top_k


def recycle_split(n: int, keep: int, share: float, div: int) -> tuple[int, int]:
    """(top tokens kept, cluster tokens) for a stage leaving ``keep`` of ``n``: the card's n/10 + 1
    clusters of the top ``share`` of the dropped tokens, with at least one top token left."""
    candidates = math.floor(share * (n - keep) + 1e-9)
    clusters = candidates // div + 1 if candidates > 0 else 0
    clusters = min(clusters, keep - 1)
    return keep - clusters, clusters


def dpc_knn(x: torch.Tensor, clusters: int, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (as in TCFormer, used by SparseVLM).

    density ρ_i = exp(-mean of the squared distances to the ``knn`` nearest points, itself included);
    δ_i = distance to the nearest denser point (ties: the lower index counts as denser), the largest
    distance for the densest point; centres = the ``clusters`` largest ρ·δ; every point joins its nearest
    centre. Distances are Euclidean / sqrt(dim). Returns (centres as point indices, cluster of each point).
    """
    m = x.shape[0]
    if clusters >= m:
        return torch.arange(m), torch.arange(m)
    x = x.detach().float().cpu()  # a few dozen points: CPU keeps index tensors and results on one device
    dist = torch.cdist(x, x) / math.sqrt(x.shape[1])
    nearest = torch.topk(dist, min(knn, m), dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(-1))
    idx = torch.arange(m)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (idx[None, :] < idx[:, None])
    )
    delta = torch.where(denser, dist, torch.full_like(dist, math.inf)).min(-1).values
    delta = torch.where(torch.isinf(delta), dist.max(), delta)
    centres = torch.sort(torch.sort(delta * density, descending=True, stable=True).indices[:clusters]).values
    assign = torch.argmin(dist[:, centres], dim=-1)  # first centre on ties
    assign[centres] = torch.arange(clusters)
    return centres, assign


def cluster_means(x: torch.Tensor, assign: torch.Tensor, clusters: int) -> torch.Tensor:
    assign = assign.to(x.device)
    sums = torch.zeros(clusters, x.shape[1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, assign, x.float())
    counts = torch.bincount(assign, minlength=clusters).clamp(min=1)
    return (sums / counts[:, None]).to(x.dtype)


def recycled_selection(
    view: LayerView,
    vision: torch.Tensor,
    scores: torch.Tensor,
    keep: int,
    recycle: bool,
    share: float,
    div: int,
    knn: int,
) -> Selection:
    """Keep ``keep`` of the ``vision`` rows by ``scores``; with ``recycle``, some of them as cluster centres
    carrying their cluster's mean state."""
    top_n, clusters = recycle_split(len(vision), keep, share, div)
    if not recycle or clusters == 0:
        return selection_keeping(view, vision[top_k(scores, keep)])
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    dropped = order[top_n:]
    count = max(clusters, math.floor(share * len(dropped) + 1e-9))
    candidates = vision[dropped[:count].to(vision.device)]
    states = view.hidden[0, candidates]
    centres, assign = dpc_knn(states, clusters, knn)
    means = cluster_means(states, assign, clusters)
    centre_rows = candidates[centres.to(candidates.device)]
    kept = torch.cat([vision[torch.sort(order[:top_n]).values.to(vision.device)], centre_rows])
    selection = selection_keeping(view, kept)
    # Each cluster lives on as its centre's row, carrying the cluster's mean state.
    hidden = view.hidden[:, selection.keep].clone()
    where = torch.searchsorted(selection.keep, centre_rows)
    hidden[0, where] = means.to(hidden)
    return Selection(selection.keep, hidden)
