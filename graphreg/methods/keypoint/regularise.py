"""Classical (learning-free) regularisation of keypoint displacement costs on a keypoint graph.

The corrField recipe (Heinrich, Handels & Simpson, MICCAI 2015, "Estimating large lung motion in
COPD patients by symmetric regularised correspondence fields"): a kNN graph of the keypoints,
its minimum spanning tree (edge weights from distance and intensity difference), exact min-sum
belief propagation on the tree with a quadratic pairwise penalty over the discrete candidate
displacements, soft correspondences ``softmax(-gamma * marginals)`` and their expectation as the
displacement; the search is run in both directions and combined. Exact sum-product BP on the same
tree (true marginals of ``exp(-gamma * energy)``, faster on a CPU) and a loopy mean-field variant
on the kNN graph itself are provided as well.

Convention:
    - ``cost``: ``(N, L)`` (or ``(N, n, n, n)`` flattened in C order), lower is better, one row
      per keypoint, one column per candidate displacement.
    - ``candidates``: ``(L, 3)`` displacements in voxels ``(z, y, x)`` of the working grid,
      fixed -> moving (for the correlation module's search cube: ``meshgrid(indexing="ij")``
      order, so ``cost.reshape(N, -1)`` columns match).
    - ``keypoints``: ``(N, 3)`` voxels ``(z, y, x)``; displacements returned ``(N, 3)`` voxels.
    - Energy of a labelling ``d``: ``sum_i cost_i(d_i) + sum_(i,j in tree) a_ij ||d_i - d_j||^2``
      with ``a_ij = alpha`` (``edge_scaled=False``) or ``a_ij = alpha * mean(w) / w_ij``
      (``edge_scaled=True``, corrField: long or high-contrast edges are regularised less).
      ``alpha`` is in cost units per voxel**2, ``gamma`` in 1 / cost units.
    - Edge weights ``w_ij = ||p_i - p_j|| + intensity_weight * |I_i - I_j|`` in voxels.
"""

from __future__ import annotations

import numpy as np
import torch

from graphreg.errors import GraphregError, check_finite, check_shape
from graphreg.methods.keypoint.graph import SpanningTree, knn_graph, minimum_spanning_tree

__all__ = [
    "combine_symmetric_marginals",
    "edge_weights",
    "min_convolution",
    "regularise_mst_bp",
    "soft_displacements",
    "tree_marginals",
]

#: Upper bound on the number of floats in one temporary buffer of the message computations.
_CHUNK_ELEMENTS = 1 << 21


def _flatten_cost(cost: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    check_shape("candidates", candidates, "(L, 3)",
                candidates.ndim == 2 and candidates.shape[1] == 3)
    if cost.ndim == 4:
        cost = cost.reshape(cost.shape[0], -1)
    check_shape("cost", cost, f"(N, {candidates.shape[0]}) or (N, n, n, n)",
                cost.ndim == 2 and cost.shape[1] == candidates.shape[0])
    check_finite("cost", cost)
    return cost


def _check_keypoints(keypoints: torch.Tensor, n: int) -> None:
    check_shape("keypoints", keypoints, f"({n}, 3)",
                keypoints.ndim == 2 and keypoints.shape == (n, 3))


def _rectilinear_axes(candidates: torch.Tensor) -> list[np.ndarray] | None:
    """Sorted coordinates per axis if ``candidates`` is a full ``ij`` meshgrid, else ``None``."""
    cand = candidates.detach().cpu().double().numpy()
    axes = [np.unique(cand[:, a]) for a in range(3)]
    if int(np.prod([a.size for a in axes])) != cand.shape[0]:
        return None
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return axes if np.array_equal(grid, cand) else None


def _min_convolve_leading(values: torch.Tensor, coords: np.ndarray,
                          weight: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = min_k values[b, k] + weight[b] * (c_j - c_k)**2`` along dimension 1.

    ``values`` is ``(B, n, ...)`` contiguous, so every slice along dimension 1 is one block of
    memory. Pairs whose penalty exceeds the value range can never beat ``k = j`` and are
    skipped, which keeps the result exact.
    """
    out = values.clone()
    size = coords.size
    span = float(values.max() - values.min()) if values.numel() else 0.0
    w_min = float(weight.min())
    prune = w_min > 0 and np.isfinite(span)
    trailing = [1] * (values.ndim - 2)
    penalty = torch.as_tensor((coords[:, None] - coords[None, :]) ** 2, dtype=values.dtype,
                              device=values.device)
    scaled = weight[:, None, None] * penalty[None]  # (B, n, n): [b, k, j]
    for k in range(size):
        lo, hi = 0, size
        if prune:
            near = np.nonzero(w_min * (coords - coords[k]) ** 2 <= span)[0]
            lo, hi = int(near[0]), int(near[-1]) + 1
        if hi - lo <= 1:
            continue
        target = out[:, lo:hi]
        proposal = values[:, k:k + 1] + scaled[:, k, lo:hi].view(-1, hi - lo, *trailing)
        torch.minimum(target, proposal, out=target)
    return out


class _Kernel:
    """The candidate set prepared once for many (soft-)min-convolutions.

    Holds the per-axis coordinates when the candidates form a full rectilinear ``ij`` grid
    (the squared distance then separates over the axes), otherwise the ``(L, L)`` squared
    distances.
    """

    def __init__(self, candidates: torch.Tensor, dtype: torch.dtype, device) -> None:
        self.count = candidates.shape[0]
        self.axes = _rectilinear_axes(candidates)
        self.sq_dist = None
        if self.axes is None:
            cand = candidates.detach().to(device=device, dtype=torch.float64)
            self.sq_dist = torch.cdist(cand, cand, compute_mode="donot_use_mm_for_euclid_dist")
            self.sq_dist = (self.sq_dist ** 2).to(dtype)

    def _chunks(self, rows: int):
        cols = max(1, _CHUNK_ELEMENTS // (self.count * max(rows, 1)))
        step = max(1, _CHUNK_ELEMENTS // (self.count * cols))
        for r in range(0, rows, step):
            for c in range(0, self.count, cols):
                yield slice(r, r + step), slice(c, c + cols)

    def min_conv(self, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.axes is not None:
            out = values.reshape(values.shape[0], *(a.size for a in self.axes))
            for dim, coords in enumerate(self.axes, start=1):
                leading = out.movedim(dim, 1).contiguous()
                out = _min_convolve_leading(leading, coords, weight).movedim(1, dim)
            return out.reshape(values.shape)
        out = torch.empty_like(values)
        for rows, cols in self._chunks(values.shape[0]):
            penalty = weight[rows, None, None] * self.sq_dist[None, :, cols]
            out[rows, cols] = (values[rows, :, None] + penalty).amin(1)
        return out

    def soft_min_conv(self, values: torch.Tensor, weight: torch.Tensor,
                      temperature: float) -> torch.Tensor:
        shift = values.amin(1, keepdim=True)
        if self.axes is not None:
            # exp-domain separable Gaussian convolution: one batched matmul per axis
            mass = torch.exp(-(values - shift).double() / temperature)
            mass = mass.reshape(values.shape[0], *(a.size for a in self.axes))
            for dim, coords in enumerate(self.axes, start=1):
                c = torch.as_tensor(coords, dtype=torch.float64, device=values.device)
                sq = (c[:, None] - c[None, :]) ** 2
                kernel = torch.exp(-weight.double()[:, None, None] * sq[None] / temperature)
                # the kernel is symmetric: contract it with axis `dim` without moving data
                if dim == 1:
                    flat = mass.reshape(values.shape[0], c.numel(), -1)
                    mass = torch.bmm(kernel, flat).reshape(mass.shape)
                elif dim == 2:
                    mass = torch.matmul(kernel[:, None], mass)
                else:
                    mass = torch.matmul(mass, kernel[:, None])
            mass = mass.reshape(values.shape).clamp_min(torch.finfo(torch.float64).tiny)
            return (shift - temperature * torch.log(mass)).to(values.dtype)
        out = torch.empty_like(values)
        for rows, cols in self._chunks(values.shape[0]):
            energy = (values[rows, :, None] - shift[rows, :, None]
                      + weight[rows, None, None] * self.sq_dist[None, :, cols])
            out[rows, cols] = shift[rows] - temperature * torch.logsumexp(-energy / temperature, 1)
        return out


def _check_weight(values: torch.Tensor, weight) -> torch.Tensor:
    weight = torch.as_tensor(weight, dtype=values.dtype, device=values.device)
    weight = weight.expand(values.shape[0]).contiguous() if weight.ndim == 0 else weight
    check_shape("weight", weight, f"({values.shape[0]},)", weight.shape == (values.shape[0],))
    if bool((weight < 0).any()):
        raise GraphregError("weight: expected non-negative penalty weights")
    return weight


def min_convolution(values: torch.Tensor, candidates: torch.Tensor,
                    weight: torch.Tensor | float,
                    temperature: float | None = None) -> torch.Tensor:
    """(Soft-)min-convolution of functions on the candidate set with a quadratic kernel.

    ``temperature=None`` (min-sum, exact):
    ``out[b, l] = min_m values[b, m] + weight[b] * ||candidates[l] - candidates[m]||^2``.
    ``temperature=T`` (sum-product in the log domain):
    ``out[b, l] = -T log sum_m exp(-(values[b, m] + weight[b] * ||c_l - c_m||^2) / T)``.

    When the candidates form a full rectilinear ``ij`` grid (the correlation search cube) the
    squared distance separates over the axes and the kernel is applied one axis at a time:
    min-sum by a loop over the ``n`` labels of the axis with exact pruning of pairs whose
    penalty exceeds the value range, sum-product by one batched matmul per axis in float64
    (energies more than ~700 T above a row's minimum are clipped there). Other candidate sets
    use an ``O(L^2)`` brute force in bounded chunks.

    Shapes:
        values: ``(B, L)``; candidates: ``(L, 3)`` voxels; weight: scalar or ``(B,)`` >= 0 (cost
        units per voxel**2). returns: ``(B, L)``.
    """
    check_shape("candidates", candidates, "(L, 3)",
                candidates.ndim == 2 and candidates.shape[1] == 3)
    check_shape("values", values, f"(B, {candidates.shape[0]})",
                values.ndim == 2 and values.shape[1] == candidates.shape[0])
    weight = _check_weight(values, weight)
    kernel = _Kernel(candidates, values.dtype, values.device)
    if temperature is None:
        return kernel.min_conv(values, weight)
    if temperature <= 0:
        raise GraphregError(f"temperature: expected a positive value or None, got {temperature}")
    return kernel.soft_min_conv(values, weight, temperature)


def tree_marginals(cost: torch.Tensor, candidates: torch.Tensor, tree: SpanningTree,
                   pair_weight: torch.Tensor | float,
                   temperature: float | None = None) -> torch.Tensor:
    """Exact marginals of a tree MRF with quadratic pairwise terms by belief propagation.

    Energy: ``E(d) = sum_i cost[i, d_i]
    + sum_(i non-root) pair_weight[i] * ||d_i - d_parent(i)||^2``.
    ``temperature=None``: min-sum BP, the result is the min-marginal
    ``min_{d: d_i = l} E(d)`` minus ``min E``. ``temperature=T``: sum-product BP on
    ``exp(-E / T)``, the result is ``-T log p_i(l)`` shifted to row minimum 0, so
    ``softmax(-result / T)`` are the exact node marginals. Messages flow leaves -> roots and back,
    one tree depth at a time (all nodes of a depth in one vectorised call, chunked so that a
    temporary holds at most ``2**21`` floats per candidate-set row block).

    Shapes:
        cost: ``(N, L)``; candidates: ``(L, 3)`` voxels; tree: over the ``N`` nodes;
        pair_weight: scalar or ``(N,)`` (entry ``i`` weighs the edge ``i -- parent(i)``,
        ignored at roots). returns: ``(N, L)``, each row's minimum 0.
    """
    cost = _flatten_cost(cost, candidates)
    n, count = cost.shape
    if tree.num_nodes != n:
        raise GraphregError(f"tree: expected a tree over {n} nodes, got {tree.num_nodes}")
    if temperature is not None and temperature <= 0:
        raise GraphregError(f"temperature: expected a positive value or None, got {temperature}")
    pair_weight = _check_weight(cost, pair_weight)
    kernel = _Kernel(candidates, cost.dtype, cost.device)

    def convolve(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if temperature is None:
            out = kernel.min_conv(values, weight)
        else:
            out = kernel.soft_min_conv(values, weight, temperature)
        return out - out.amin(1, keepdim=True)

    parent = tree.parent.to(cost.device)
    levels = [nodes.to(cost.device) for nodes in tree.levels()]
    chunk = max(1, _CHUNK_ELEMENTS // count)
    belief = cost.clone()
    upward = torch.zeros_like(belief)
    for nodes in reversed(levels[1:]):  # leaves -> root: message child -> parent
        for part in nodes.split(chunk):
            message = convolve(belief[part], pair_weight[part])
            upward[part] = message
            belief.index_add_(0, parent[part], message)
    for nodes in levels[1:]:  # root -> leaves: the parent's belief is final here
        for part in nodes.split(chunk):
            outgoing = belief[parent[part]] - upward[part]
            belief[part] += convolve(outgoing, pair_weight[part])
    return belief - belief.amin(1, keepdim=True)


def soft_displacements(marginals: torch.Tensor, candidates: torch.Tensor,
                       gamma: float) -> torch.Tensor:
    """Expected displacement under the soft correspondences ``softmax(-gamma * marginals)``.

    Shapes:
        marginals: ``(N, L)`` (cost units); candidates: ``(L, 3)`` voxels;
        returns ``(N, 3)`` voxels.
    """
    marginals = _flatten_cost(marginals, candidates)
    if gamma <= 0:
        raise GraphregError(f"gamma: expected a positive inverse temperature, got {gamma}")
    probs = torch.softmax(-gamma * marginals, dim=1)
    return probs @ candidates.to(probs)


def distribution_moments(logits: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the displacement distribution ``softmax(logits)``.

    Differentiable. The standard deviation is ``sqrt(E|d|^2 - |E d|^2)`` (the root of the
    trace of the covariance), a scalar spread per keypoint.

    Shapes:
        logits: ``(N, L)``; candidates: ``(L, 3)`` voxels; returns ``(N, 3)`` and ``(N,)`` voxels.
    """
    weights = torch.softmax(logits, dim=1)
    candidates = candidates.to(weights)
    mean = weights @ candidates
    variance = (weights @ candidates ** 2 - mean ** 2).sum(1)
    return mean, variance.clamp_min(0).sqrt()


def edge_weights(keypoints: torch.Tensor, edge_index: torch.Tensor,
                 intensities: torch.Tensor | None = None,
                 intensity_weight: float = 16.0) -> torch.Tensor:
    """corrField edge weights ``||p_i - p_j|| + intensity_weight * |I_i - I_j|``.

    Shapes:
        keypoints: ``(N, 3)`` voxels; edge_index: ``(2, E)``; intensities: ``(N,)`` or ``None``.
        returns: ``(E,)`` voxels (``intensity_weight`` converts intensity to voxels; the default
        suits intensities scaled to [0, 1] from [-1000, 1500] HU: 150 HU ~ 1 voxel).
    """
    check_shape("keypoints", keypoints, "(N, 3)", keypoints.ndim == 2 and keypoints.shape[1] == 3)
    src, dst = edge_index
    weights = (keypoints[src] - keypoints[dst]).norm(dim=1)
    if intensities is not None:
        check_shape("intensities", intensities, f"({keypoints.shape[0]},)",
                    intensities.shape == (keypoints.shape[0],))
        weights = weights + intensity_weight * (intensities[src] - intensities[dst]).abs()
    return weights


def _pair_weights(weights: torch.Tensor, alpha: float, edge_scaled: bool) -> torch.Tensor:
    if alpha < 0:
        raise GraphregError(f"alpha: expected a non-negative penalty weight, got {alpha}")
    if not edge_scaled:
        return torch.full_like(weights, alpha)
    clipped = weights.clamp_min(1e-3)
    return alpha * clipped.mean() / clipped


def regularise_mst_bp(cost: torch.Tensor, candidates: torch.Tensor, keypoints: torch.Tensor,
                      k: int = 8, alpha: float = 1.0, gamma: float = 5.0,
                      intensities: torch.Tensor | None = None, intensity_weight: float = 16.0,
                      edge_scaled: bool = True,
                      inference: str = "min-sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Regularise keypoint costs by exact belief propagation on a minimum spanning tree.

    The kNN graph (``k`` neighbours) of the keypoints is weighted by :func:`edge_weights`; its
    minimum spanning tree carries the pairwise penalty ``a_ij ||d_i - d_j||^2`` (see the module
    ``Convention``); :func:`tree_marginals` gives exact marginals and
    :func:`soft_displacements` the expected displacement under ``softmax(-gamma * marginals)``.

    ``inference="min-sum"`` (corrField) uses min-marginals; ``"sum-product"`` uses the true
    marginals of the Gibbs distribution ``exp(-gamma * E)`` (so the result is the posterior mean
    displacement); it needs one exp/log per message and three small matmuls, and is several
    times faster on a CPU for the 29^3 search cube.

    Shapes:
        cost: ``(N, L)`` or ``(N, n, n, n)``; candidates: ``(L, 3)`` voxels ``(z, y, x)``;
        keypoints: ``(N, 3)`` voxels; intensities: ``(N,)`` or ``None``.
        returns: displacements ``(N, 3)`` voxels, marginals ``(N, L)`` (row minimum 0).
    """
    cost = _flatten_cost(cost, candidates)
    _check_keypoints(keypoints, cost.shape[0])
    if inference not in ("min-sum", "sum-product"):
        raise GraphregError(f"inference: expected 'min-sum' or 'sum-product', got {inference!r}")
    if gamma <= 0:
        raise GraphregError(f"gamma: expected a positive inverse temperature, got {gamma}")
    if cost.shape[0] < 2:
        marginals = cost - cost.amin(1, keepdim=True)
        return soft_displacements(marginals, candidates, gamma), marginals
    points = keypoints.detach().to(torch.float64)
    values = None if intensities is None else intensities.detach().to(torch.float64)
    edges = knn_graph(points, min(k, cost.shape[0] - 1))
    tree = minimum_spanning_tree(points, edges, edge_weights(points, edges, values,
                                                             intensity_weight))
    non_root = tree.parent >= 0
    tree_edges = torch.stack([torch.nonzero(non_root).flatten(), tree.parent[non_root]])
    pair = torch.zeros(cost.shape[0], dtype=torch.float64)
    pair[non_root] = _pair_weights(edge_weights(points, tree_edges, values, intensity_weight),
                                   alpha, edge_scaled)
    temperature = None if inference == "min-sum" else 1.0 / gamma
    marginals = tree_marginals(cost, candidates, tree, pair.to(cost.device, cost.dtype),
                               temperature)
    return soft_displacements(marginals, candidates, gamma), marginals


def combine_symmetric_marginals(forward: torch.Tensor, backward: torch.Tensor,
                                candidates: torch.Tensor) -> torch.Tensor:
    """corrField's symmetric combination: average marginals with the backward ones mirrored.

    ``backward[i, l]`` scores the moving -> fixed displacement ``candidates[l]`` at the moved
    keypoint ``keypoints[i] + forward_displacement[i]``; it is the forward hypothesis
    ``-candidates[l]``, so the backward columns are permuted onto the negated candidates.
    Apply :func:`soft_displacements` to the result.

    Shapes:
        forward, backward: ``(N, L)``; candidates: ``(L, 3)`` symmetric about 0; returns ``(N, L)``.
    """
    forward = _flatten_cost(forward, candidates)
    backward = _flatten_cost(backward, candidates)
    check_shape("backward", backward, f"{tuple(forward.shape)}", backward.shape == forward.shape)
    cand = candidates.detach().to(torch.float64)
    match = torch.cdist(-cand, cand)
    distance, mirror = match.min(1)
    if float(distance.max()) > 1e-6:
        raise GraphregError("candidates: expected a set symmetric about zero (every -d present)")
    return 0.5 * (forward + backward[:, mirror.to(backward.device)])
