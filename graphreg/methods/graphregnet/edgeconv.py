"""EdgeConv with mean aggregation in plain torch (the layer of torch-geometric, without its import).

Wang et al., "Dynamic Graph CNN for Learning on Point Clouds", ACM TOG 2019: every node ``i``
averages an edge function over its incoming edges ``j -> i``::

    x_i' = mean_{j : (j, i) in E} h([x_i, x_j - x_i])          (0 for a node without edges)

This is ``torch_geometric.nn.EdgeConv(h, aggr="mean")``, computed the same way (gather the two
ends of every edge, one call of ``h`` on all edges, a sum per target divided by its in-degree);
construction re-initialises ``h`` as torch-geometric's does (same random draws), and the edge
function is stored as ``.nn``, as torch-geometric stores it, so state dicts are interchangeable.
A hand-written replacement: its reason and equality test are listed in ``docs/design.md``
("Hand-written replacements of library code").

Convention:
    ``edge_index`` ``(2, E)`` long: row 0 the source (neighbour ``j``), row 1 the target (centre
    ``i``), torch-geometric's ``source_to_target`` flow, as :func:`graphreg.methods.keypoint.graph.knn_graph`
    returns it.
"""

from __future__ import annotations

import torch
from torch import nn

from graphreg.errors import check_shape


def _reset(module: nn.Module) -> None:
    """Re-initialise ``module``: its own ``reset_parameters`` if it has one, else its children's,
    depth first (the order of ``torch_geometric.nn.inits.reset``)."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    for child in module.children():
        _reset(child)


class EdgeConv(nn.Module):
    """Mean-aggregated EdgeConv layer (see the module docstring).

    Args:
        edge_function: ``h``, mapping ``(E, 2 F_in)`` to ``(E, F_out)``; kept as ``.nn``.

    Shapes:
        forward(x ``(N, F_in)``, edge_index ``(2, E)``) -> ``(N, F_out)``.
    """

    def __init__(self, edge_function: nn.Module) -> None:
        super().__init__()
        self.nn = edge_function
        _reset(self.nn)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        check_shape("edge_index", edge_index, "(2, E)", edge_index.ndim == 2 and edge_index.shape[0] == 2)
        source, target = edge_index[0], edge_index[1]
        centre = x.index_select(0, target)
        messages = self.nn(torch.cat([centre, x.index_select(0, source) - centre], 1))
        total = messages.new_zeros(n, messages.shape[1]).index_add_(0, target, messages)
        degree = torch.bincount(target, minlength=n).clamp_min_(1).to(messages.dtype)
        return total / degree[:, None]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nn={self.nn}, aggr=mean)"
