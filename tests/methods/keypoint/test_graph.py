"""Tests of graphreg.methods.keypoint.graph (kNN graph and minimum spanning tree)."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from graphreg.errors import GraphregError, ShapeError
from graphreg.methods.keypoint import graph
from graphreg.methods.keypoint.graph import knn_graph, knn_graph_torch, minimum_spanning_tree


def line(*xs):
    """Points on the x axis (z = y = 0)."""
    return torch.tensor([[0.0, 0.0, float(x)] for x in xs])


def edges_as_set(edge_index):
    return set(map(tuple, edge_index.T.tolist()))


def test_knn_hand_made():
    points = line(0, 1, 3, 7)
    edge_index = knn_graph_torch(points, 1)
    # source_to_target: row 0 = neighbour j, row 1 = centre i
    assert edge_index.tolist() == [[1, 0, 1, 2], [0, 1, 2, 3]]
    edge_index = knn_graph_torch(points, 2)
    assert edge_index.tolist() == [[1, 2, 0, 2, 1, 0, 2, 1], [0, 0, 1, 1, 2, 2, 3, 3]]


def test_knn_include_self_and_ties():
    points = line(0, -1, 1, 5)  # 1 and 2 tie as neighbours of 0
    assert knn_graph_torch(points, 1).tolist()[0][0] == 1  # lower index wins the tie
    with_self = knn_graph_torch(points, 2, include_self=True)
    assert with_self[:, :2].tolist() == [[0, 1], [0, 0]]


def test_knn_chunked_matches_numpy(monkeypatch):
    torch.manual_seed(0)
    points = torch.rand(50, 3) * 10
    monkeypatch.setattr(graph, "_CHUNK_ELEMENTS", 120)  # forces many row chunks
    edge_index = knn_graph_torch(points, 4)
    dist = ((points[:, None] - points[None]) ** 2).sum(-1).numpy()
    np.fill_diagonal(dist, np.inf)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :4]
    assert edge_index[0].reshape(50, 4).tolist() == expected.tolist()
    assert edge_index[1].tolist() == np.repeat(np.arange(50), 4).tolist()


def test_knn_matches_torch_cluster():
    torch_cluster = pytest.importorskip("torch_cluster")
    torch.manual_seed(1)
    points = torch.rand(200, 3) * 50
    reference = torch_cluster.knn_graph(points, 6, loop=False, flow="source_to_target")
    assert edges_as_set(knn_graph_torch(points, 6)) == edges_as_set(reference)
    assert edges_as_set(knn_graph(points, 6)) == edges_as_set(reference)


def test_knn_exceptions():
    with pytest.raises(ShapeError, match="points"):
        knn_graph(torch.zeros(5, 2), 2)
    with pytest.raises(GraphregError, match="k:"):
        knn_graph(torch.zeros(3, 3), 3)


def test_mst_chain():
    points = line(0, 1, 3, 7, 8)
    edge_index = knn_graph(points, 3)
    tree = minimum_spanning_tree(points, edge_index, root=2)
    assert tree.parent.tolist() == [1, 2, -1, 2, 3]
    assert tree.depth.tolist() == [2, 1, 0, 1, 2]
    position = {int(n): i for i, n in enumerate(tree.order)}
    for node, parent in enumerate(tree.parent.tolist()):
        if parent >= 0:
            assert position[parent] < position[node]
    assert [lv.tolist() for lv in tree.levels()] == [[2], [1, 3], [0, 4]]


def test_mst_uses_weights_and_zero_weights():
    points = line(0, 1, 2)
    edge_index = torch.tensor([[0, 1, 0], [1, 2, 2]])
    weights = torch.tensor([5.0, 0.0, 1.0])  # the zero-weight edge must still be used
    tree = minimum_spanning_tree(points, edge_index, weights)
    assert tree.parent.tolist() == [-1, 2, 0]


def test_mst_forest():
    points = line(0, 1, 100, 101)
    tree = minimum_spanning_tree(points, knn_graph(points, 1))
    assert tree.parent.tolist() == [-1, 0, -1, 2]
    assert sorted(tree.order.tolist()) == [0, 1, 2, 3]


def test_mst_exceptions():
    points = line(0, 1, 2)
    with pytest.raises(GraphregError, match="edge_index"):
        minimum_spanning_tree(points, torch.tensor([[0], [3]]))
    with pytest.raises(ShapeError, match="weights"):
        minimum_spanning_tree(points, torch.tensor([[0], [1]]), torch.ones(2))


def test_knn_matches_scipy_kdtree():
    """The pure-torch kNN against a library one that is always installed (scipy's KD-tree)."""
    torch.manual_seed(2)
    points = torch.rand(300, 3, dtype=torch.float64) * 50
    _, neighbours = cKDTree(points.numpy()).query(points.numpy(), k=7)  # column 0: the point itself
    edge_index = knn_graph_torch(points, 6)
    assert edge_index[0].reshape(300, 6).tolist() == neighbours[:, 1:].tolist()
    assert edge_index[1].tolist() == np.repeat(np.arange(300), 6).tolist()
