"""Tests of graphreg.methods.keypoint.regularise (tree BP, mean field, symmetric combination)."""

import itertools

import pytest
import torch

from graphreg.errors import GraphregError, ShapeError
from graphreg.methods.keypoint.graph import SpanningTree
from graphreg.methods.keypoint.regularise import (
    combine_symmetric_marginals,
    min_convolution,
    regularise_mst_bp,
    soft_displacements,
    tree_marginals,
)


def cube(radius, step=1.0, dtype=torch.float64):
    r = torch.arange(-radius, radius + 1, dtype=dtype) * step
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def exact_sq_dist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def test_min_convolution_grid_and_brute_force_exact():
    torch.manual_seed(0)
    cand = cube(2, step=2.0)
    values = torch.rand(5, cand.shape[0], dtype=torch.float64) * 40
    weight = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    expected = (values[:, :, None] + weight[:, None, None] * exact_sq_dist(cand, cand)).amin(1)
    torch.testing.assert_close(min_convolution(values, cand, weight), expected, rtol=0, atol=1e-12)
    perm = torch.randperm(cand.shape[0])  # no longer a grid -> brute-force path
    torch.testing.assert_close(min_convolution(values[:, perm], cand[perm], weight),
                               expected[:, perm], rtol=0, atol=1e-12)


def test_soft_min_convolution_matches_logsumexp():
    torch.manual_seed(1)
    cand = cube(1, step=2.0)
    values = torch.rand(3, cand.shape[0], dtype=torch.float64) * 5
    weight = torch.tensor([0.2, 1.0, 2.0], dtype=torch.float64)
    t = 0.7
    energy = values[:, :, None] + weight[:, None, None] * exact_sq_dist(cand, cand)
    expected = -t * torch.logsumexp(-energy / t, dim=1)
    torch.testing.assert_close(min_convolution(values, cand, weight, temperature=t), expected)
    perm = torch.randperm(cand.shape[0])
    torch.testing.assert_close(min_convolution(values[:, perm], cand[perm], weight, t),
                               expected[:, perm])


def brute_force_marginals(cost, cand, parent, weight, temperature):
    """Marginals of a tiny tree MRF by enumerating every labelling."""
    n, count = cost.shape
    labels = torch.tensor(list(itertools.product(range(count), repeat=n)))
    energy = cost[torch.arange(n), labels].sum(1)
    for child, par in enumerate(parent):
        if par >= 0:
            diff = cand[labels[:, child]] - cand[labels[:, par]]
            energy = energy + weight[child] * (diff ** 2).sum(1)
    out = torch.empty_like(cost)
    for i in range(n):
        for label in range(count):
            sel = energy[labels[:, i] == label]
            out[i, label] = sel.min() if temperature is None else \
                -temperature * torch.logsumexp(-sel / temperature, 0)
    return out - out.amin(1, keepdim=True)


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_tree_bp_equals_brute_force_on_four_nodes(temperature):
    torch.manual_seed(2)
    cand = cube(1, step=1.0)[::3]  # 9 labels, not a full grid -> brute-force kernel path too
    full = cube(1, step=1.0)[:8]
    for candidates in (cand, full):
        count = candidates.shape[0]
        cost = torch.rand(4, count, dtype=torch.float64) * 4
        parent = [-1, 0, 0, 1]  # root 0 with children 1, 2; 3 hangs below 1
        tree = SpanningTree(parent=torch.tensor(parent), order=torch.tensor([0, 1, 2, 3]),
                            depth=torch.tensor([0, 1, 1, 2]))
        weight = torch.tensor([0.0, 0.7, 0.3, 1.5], dtype=torch.float64)
        expected = brute_force_marginals(cost, candidates, parent, weight, temperature)
        result = tree_marginals(cost, candidates, tree, weight, temperature)
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-9)


def test_tree_bp_full_cube_equals_brute_force():
    torch.manual_seed(3)
    candidates = cube(1, step=2.0)  # 27 labels on the separable path
    cost = torch.rand(3, 27, dtype=torch.float64) * 10
    parent = [-1, 0, 1]
    tree = SpanningTree(torch.tensor(parent), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    weight = torch.tensor([0.0, 0.4, 0.9], dtype=torch.float64)
    for temperature in (None, 2.0):
        expected = brute_force_marginals(cost, candidates, parent, weight, temperature)
        torch.testing.assert_close(tree_marginals(cost, candidates, tree, weight, temperature),
                                   expected, rtol=0, atol=1e-9)


def noisy_problem(seed=4, n=40):
    """Keypoints on a line, true displacement (2, 0, -2), unaries with strong outliers."""
    torch.manual_seed(seed)
    cand = cube(3, step=1.0, dtype=torch.float32)
    keypoints = torch.stack([torch.zeros(n), torch.zeros(n), torch.arange(n) * 3.0], 1)
    truth = torch.tensor([2.0, 0.0, -2.0])
    sq = ((cand - truth) ** 2).sum(1)
    cost = sq.expand(n, -1).clone() + torch.rand(n, cand.shape[0])
    outliers = torch.arange(0, n, 4)
    near = torch.nonzero((sq >= 1) & (sq <= 3)).flatten()
    wrong = near[torch.randint(0, near.numel(), (outliers.numel(),))]
    cost[outliers, wrong] -= 8.0  # a deep false minimum next to the truth at a quarter of the nodes
    return cost, cand, keypoints, truth, outliers


@pytest.mark.parametrize("inference", ["min-sum", "sum-product"])
def test_mst_bp_recovers_smooth_displacement(inference):
    cost, cand, keypoints, truth, outliers = noisy_problem()
    naive = cand[cost.argmin(1)]
    assert (naive[outliers] - truth).norm(dim=1).min() > 0.5  # the outliers really mislead
    disp, marginals = regularise_mst_bp(cost, cand, keypoints, k=4, alpha=10.0, gamma=20.0,
                                        inference=inference)
    assert disp.shape == (40, 3) and marginals.shape == cost.shape
    assert torch.equal(cand[marginals.argmin(1)], truth.expand(40, 3))
    assert (disp - truth).norm(dim=1).max() < 0.1
    assert torch.allclose(marginals.amin(1), torch.zeros(40))


def test_mst_bp_accepts_cube_cost_and_intensities():
    cost, cand, keypoints, truth, _ = noisy_problem()
    intensities = torch.linspace(0, 1, 40)
    disp, _ = regularise_mst_bp(cost.reshape(40, 7, 7, 7), cand, keypoints, k=4, alpha=10.0,
                                gamma=20.0, intensities=intensities, edge_scaled=False)
    assert (disp - truth).norm(dim=1).max() < 0.1


def test_symmetric_combination():
    cand = cube(1, step=2.0)
    forward = torch.full((1, 27), 5.0, dtype=torch.float64)
    backward = torch.full((1, 27), 5.0, dtype=torch.float64)
    target = torch.tensor([2.0, 0.0, -2.0], dtype=torch.float64)
    forward[0, (cand == target).all(1)] = 0.0
    backward[0, (cand == -target).all(1)] = 0.0  # backward search finds the inverse
    combined = combine_symmetric_marginals(forward, backward, cand)
    assert torch.equal(cand[combined.argmin(1)][0], target)
    assert combined.amin() == 0.0


def test_soft_displacements_convention():
    cand = cube(1, step=2.0)
    marginals = torch.full((2, 27), 100.0, dtype=torch.float64)
    marginals[0, 0] = 0.0  # candidate (-2, -2, -2)
    marginals[1, 26] = 0.0
    torch.testing.assert_close(soft_displacements(marginals, cand, gamma=1.0),
                               torch.tensor([[-2.0] * 3, [2.0] * 3], dtype=torch.float64))


def test_exceptions():
    cand = cube(1)
    with pytest.raises(ShapeError, match="cost"):
        regularise_mst_bp(torch.zeros(4, 26), cand, torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="keypoints"):
        regularise_mst_bp(torch.zeros(4, 27), cand, torch.zeros(3, 3))
    with pytest.raises(GraphregError, match="inference"):
        regularise_mst_bp(torch.zeros(4, 27), cand, torch.rand(4, 3), inference="max")
    with pytest.raises(GraphregError, match="gamma"):
        soft_displacements(torch.zeros(4, 27), cand, gamma=0.0)
    with pytest.raises(GraphregError, match="cost"):
        regularise_mst_bp(torch.full((4, 27), float("nan")), cand, torch.rand(4, 3))
    with pytest.raises(GraphregError, match="symmetric"):
        combine_symmetric_marginals(torch.zeros(1, 3), torch.zeros(1, 3),
                                    torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]))
