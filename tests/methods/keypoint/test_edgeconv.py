"""graphreg.methods.graphregnet.edgeconv.EdgeConv equals torch_geometric.nn.EdgeConv(aggr="mean")."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from graphreg.errors import ShapeError
from graphreg.methods.graphregnet.edgeconv import EdgeConv
from graphreg.methods.keypoint.graph import knn_graph_torch

geometric = pytest.importorskip("torch_geometric.nn")


def _edge_function(features_in: int, features_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2 * features_in, features_out), nn.LeakyReLU(0.1),
                         nn.Linear(features_out, features_out))


@pytest.mark.parametrize("edges", ["knn", "irregular"])
def test_same_output_and_gradients_as_torch_geometric(edges):
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(40, 3, generator=generator, dtype=torch.float64)
    if edges == "knn":
        edge_index = knn_graph_torch(points, 6)
    else:  # in-degrees from 0 to many, repeated edges, self-loops
        edge_index = torch.randint(0, 35, (2, 150), generator=generator)
    h = _edge_function(5, 7).double()
    ours, theirs = EdgeConv(copy.deepcopy(h)), geometric.EdgeConv(copy.deepcopy(h), aggr="mean")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(40, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    out = ours(x, edge_index)
    expected = theirs(x, edge_index)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    ours_grad = torch.autograd.grad((out * weights).sum(), [x, *ours.parameters()])
    theirs_grad = torch.autograd.grad((expected * weights).sum(), [x, *theirs.parameters()])
    for a, b in zip(ours_grad, theirs_grad):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if edges == "irregular":  # nodes 35..39 have no incoming edge: zero, as in torch-geometric
        assert torch.all(out[35:] == 0)


def test_construction_draws_the_same_initial_weights_as_torch_geometric():
    h = _edge_function(3, 4)
    torch.manual_seed(3)
    ours = EdgeConv(copy.deepcopy(h)).state_dict()
    torch.manual_seed(3)
    theirs = geometric.EdgeConv(copy.deepcopy(h), aggr="mean").state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)
    assert not torch.equal(ours["nn.0.weight"], h.state_dict()["0.weight"])  # re-initialised


def test_mean_over_neighbours_by_hand():
    """h([x_i, x_j - x_i]) = x_j - x_i: the layer returns the mean neighbour minus the centre."""
    layer = EdgeConv(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        layer.nn.weight.copy_(torch.tensor([[0.0, 1.0]]))
    x = torch.tensor([[1.0], [2.0], [4.0]])
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])  # 1 -> 0, 2 -> 0, 0 -> 1; node 2 has none
    out = layer(x, edge_index)
    torch.testing.assert_close(out, torch.tensor([[2.0], [-1.0], [0.0]]))


def test_gradcheck():
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    layer = EdgeConv(_edge_function(2, 3).double())
    edge_index = torch.tensor([[1, 2, 3, 0, 5, 4], [0, 0, 1, 2, 4, 4]])
    assert torch.autograd.gradcheck(lambda v: layer(v, edge_index), (x,), fast_mode=True)


def test_bad_edge_index():
    with pytest.raises(ShapeError, match="edge_index"):
        EdgeConv(_edge_function(2, 3))(torch.zeros(4, 2), torch.zeros(3, 5, dtype=torch.long))
