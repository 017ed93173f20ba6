"""Keypoint graphs: k-nearest-neighbour edges and a minimum spanning tree over them.

Convention:
    - Points are ``(N, 3)`` float tensors (any consistent unit; the pipeline uses voxels
      ``(z, y, x)`` of the working grid).
    - Edges follow PyTorch Geometric's ``source_to_target`` flow: ``edge_index[0]`` is the
      neighbour ``j`` (message source), ``edge_index[1]`` the centre ``i`` (message target).
    - A spanning tree is returned as a parent array (``-1`` at roots) plus a root-to-leaf
      visiting order and the depth of every node, so callers can process one depth at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

from graphreg.errors import GraphregError, check_shape

__all__ = ["SpanningTree", "knn_graph", "knn_graph_torch", "minimum_spanning_tree"]

try:  # optional accelerated backend; the pure-torch path below builds the same graph
    import torch_cluster as _torch_cluster
except ImportError:  # pragma: no cover - depends on the environment
    _torch_cluster = None

#: Upper bound on the number of pairwise distances held in memory at once by the pure path.
_CHUNK_ELEMENTS = 1 << 24


def _check_points(points: torch.Tensor) -> None:
    check_shape("points", points, "(N, 3)", points.ndim == 2 and points.shape[1] == 3)


def knn_graph_torch(points: torch.Tensor, k: int, include_self: bool = False) -> torch.Tensor:
    """Pure-torch k-nearest-neighbour graph (the fallback of :func:`knn_graph`; a hand-written
    replacement listed in ``docs/design.md``, "Hand-written replacements of library code").

    Exact squared Euclidean distances are computed in row chunks (at most ``2**24`` distances
    in memory) and every row is sorted with a *stable* sort, so among neighbours at exactly the
    same distance the one with the lower index wins. With ``include_self=False`` the centre
    itself is excluded even when other points coincide with it.

    Shapes:
        points: ``(N, 3)``.
        returns: ``(2, N * k)`` long; edges grouped by centre ``i = 0..N-1`` (``edge_index[1]``),
        each group ordered by increasing distance.
    """
    _check_points(points)
    n = points.shape[0]
    available = n if include_self else n - 1
    if not 1 <= k <= available:
        raise GraphregError(f"k: expected 1 <= k <= {available} for {n} points "
                            f"(include_self={include_self}), got {k}")
    pts = points.detach()
    if not pts.is_floating_point():
        pts = pts.double()
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    neighbours = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = ((pts[start:stop, None, :] - pts[None, :, :]) ** 2).sum(-1)
        if not include_self:
            centre = torch.arange(start, stop, device=pts.device)
            dist[centre - start, centre] = float("inf")
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        neighbours.append(order)
    source = torch.cat(neighbours).reshape(-1)
    target = torch.arange(n, device=points.device).repeat_interleave(k)
    return torch.stack([source.to(points.device), target])


def knn_graph(points: torch.Tensor, k: int, include_self: bool = False) -> torch.Tensor:
    """k-nearest-neighbour graph of a point set.

    Uses ``torch_cluster.knn_graph`` when it is installed and :func:`knn_graph_torch` otherwise.
    Both give the same set of edges whenever the k-th and (k+1)-th neighbour distances of every
    point differ (no ties at the cut); at ties the pure path keeps the lower index, while
    ``torch_cluster`` keeps whichever its KD-tree finds first.

    Shapes:
        points: ``(N, 3)``.
        returns: ``(2, N * k)`` long, ``edge_index[0]`` = neighbour ``j``, ``edge_index[1]`` =
        centre ``i`` (``source_to_target``), grouped by centre.
    """
    _check_points(points)
    if _torch_cluster is None:
        return knn_graph_torch(points, k, include_self)
    n = points.shape[0]
    available = n if include_self else n - 1
    if not 1 <= k <= available:
        raise GraphregError(f"k: expected 1 <= k <= {available} for {n} points "
                            f"(include_self={include_self}), got {k}")
    edge_index = _torch_cluster.knn_graph(points, k, loop=include_self, flow="source_to_target")
    order = torch.argsort(edge_index[1], stable=True)
    return edge_index[:, order]


@dataclass(frozen=True)
class SpanningTree:
    """A rooted spanning tree (or forest, one root per connected component).

    Attributes:
        parent: ``(N,)`` long, the parent of every node, ``-1`` at roots.
        order: ``(N,)`` long, all nodes in breadth-first order (every parent before its children).
        depth: ``(N,)`` long, number of edges from the node to its root (``0`` at roots).
    """

    parent: torch.Tensor
    order: torch.Tensor
    depth: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.parent.shape[0])

    def levels(self) -> list[torch.Tensor]:
        """Node indices grouped by depth: ``levels()[d]`` holds all nodes at depth ``d``."""
        max_depth = int(self.depth.max()) if self.num_nodes else -1
        return [torch.nonzero(self.depth == d).flatten() for d in range(max_depth + 1)]


def minimum_spanning_tree(points: torch.Tensor, edge_index: torch.Tensor,
                          weights: torch.Tensor | None = None, root: int = 0) -> SpanningTree:
    """Minimum spanning tree of a (possibly directed, duplicated) edge list, rooted for BP.

    The edge list is symmetrised (an edge and its reverse are one undirected edge, keeping the
    smaller weight). ``scipy.sparse.csgraph.minimum_spanning_tree`` finds the tree and
    ``breadth_first_order`` roots it. If the graph has several connected components every
    component gets its own root (``root`` for its component, the lowest index elsewhere).

    Shapes:
        points: ``(N, 3)`` (gives ``N`` and, when ``weights`` is ``None``, Euclidean weights).
        edge_index: ``(2, E)`` long.
        weights: ``(E,)`` non-negative, or ``None`` for the edge lengths.
        returns: :class:`SpanningTree` with ``(N,)`` tensors on ``points.device``.
    """
    _check_points(points)
    check_shape("edge_index", edge_index, "(2, E)",
                edge_index.ndim == 2 and edge_index.shape[0] == 2)
    n = points.shape[0]
    if not 0 <= root < n:
        raise GraphregError(f"root: expected an index in [0, {n}), got {root}")
    src = edge_index[0].detach().cpu().numpy().astype(np.int64)
    dst = edge_index[1].detach().cpu().numpy().astype(np.int64)
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise GraphregError(f"edge_index: expected node indices in [0, {n}), got values in "
                            f"[{min(src.min(), dst.min())}, {max(src.max(), dst.max())}]")
    if weights is None:
        pts = points.detach().cpu().double().numpy()
        w = np.linalg.norm(pts[src] - pts[dst], axis=1)
    else:
        check_shape("weights", weights, f"({edge_index.shape[1]},)",
                    weights.ndim == 1 and weights.shape[0] == edge_index.shape[1])
        w = weights.detach().cpu().double().numpy()
        if (w < 0).any() or not np.isfinite(w).all():
            raise GraphregError("weights: expected finite non-negative edge weights")
    keep = src != dst
    src, dst, w = src[keep], dst[keep], w[keep]
    # scipy treats explicit zeros as missing edges: shift all weights by a tiny positive amount
    w = w + max(float(w.max()) if w.size else 0.0, 1.0) * 1e-9
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    # undirected: collapse duplicates to the minimum weight via a sort on (a, b, w)
    order = np.lexsort((w, b, a))
    a, b, w = a[order], b[order], w[order]
    first = np.ones(a.size, dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    graph = scipy.sparse.coo_matrix((w[first], (a[first], b[first])), shape=(n, n)).tocsr()
    tree = scipy.sparse.csgraph.minimum_spanning_tree(graph)
    tree = tree + tree.T
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    visit = []
    seen = np.zeros(n, dtype=bool)
    for start in [root] + list(range(n)):
        if seen[start]:
            continue
        nodes, preds = scipy.sparse.csgraph.breadth_first_order(tree, start, directed=False,
                                                                return_predecessors=True)
        for node in nodes[1:]:  # BFS order: the parent's depth is known before the child's
            parent[node] = preds[node]
            depth[node] = depth[preds[node]] + 1
        seen[nodes] = True
        visit.append(nodes)
    device = points.device
    return SpanningTree(parent=torch.as_tensor(parent, device=device),
                        order=torch.as_tensor(np.concatenate(visit), device=device),
                        depth=torch.as_tensor(depth, device=device))

