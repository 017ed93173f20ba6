"""GraphRegNet: an EdgeConv graph network that regularises keypoint displacement cost volumes.

After Hansen & Heinrich, "GraphRegNet: Deep Graph Regularisation Networks on Sparse Keypoints
for Dense Registration of 3D Lung CTs", IEEE TMI 2021. For every keypoint a small 3D CNN encodes
its cost volume (one cost per candidate displacement of a cubic search grid) into a feature
vector; the keypoint coordinates are appended; three EdgeConv layers (mean aggregation,
:mod:`graphreg.methods.graphregnet.edgeconv`, equal to torch-geometric's) on the kNN graph of the
keypoints exchange information between neighbours; a decoder turns each node's features back
into a heat-map over the candidates. The heat-map is *added* to the cost-derived logits
``-beta * cost`` (beta learned), so an untrained decoder starts from the plain soft-argmin of
the costs and learning only has to add the regularisation. A softmax over the candidates gives
each keypoint's displacement distribution; its mean is the displacement (soft-argmax), its
spread the keypoint's uncertainty.

Variants (for ablations, same constructor): ``graph="edgeconv"`` (the model),
``graph="none"`` (encoder/decoder only, no message passing) and ``graph="coordinates"``
(EdgeConv on the keypoint coordinates only: the graph layers see where the neighbours are but
not their costs; each node's own cost code still reaches the decoder).

Convention:
    cost ``(N, L)`` with ``L = (2r + 1)^3`` candidates in the raster order of
    :func:`graphreg.methods.keypoint.correlation.candidate_displacements` (z slowest), lower = better
    match; keypoints ``(N, 3)`` working voxels ``(z, y, x)``; edge_index ``(2, E)`` from
    :func:`graphreg.methods.keypoint.graph.knn_graph` (row 0 neighbour, row 1 centre).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from graphreg.errors import ConfigError, check_shape
from graphreg.training.checkpoint import LoadableModel, register_architecture
from graphreg.methods.graphregnet.edgeconv import EdgeConv

#: graph variants understood by :class:`GraphRegNet`
GRAPH_VARIANTS = ("edgeconv", "none", "coordinates")


def _edge_mlp(in_features: int, out_features: int) -> nn.Sequential:
    """The EdgeConv edge function ``h([x_i, x_j - x_i])``."""
    return nn.Sequential(nn.Linear(2 * in_features, out_features), nn.LayerNorm(out_features), nn.LeakyReLU(0.1),
                         nn.Linear(out_features, out_features), nn.LeakyReLU(0.1))


def interpolation_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """1D linear interpolation from ``size_in`` to ``size_out`` samples (``align_corners=True``).

    Shapes:
        returns ``(size_out, size_in)``; row ``i`` holds the weights of output sample ``i``.
    """
    position = torch.linspace(0, size_in - 1, size_out, dtype=torch.float64)
    lower = position.floor().clamp(max=size_in - 2 if size_in > 1 else 0).long()
    frac = position - lower
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix[rows, lower] += 1 - frac
    if size_in > 1:
        matrix[rows, lower + 1] += frac
    return matrix.float()


def resize_cubes(volumes: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Trilinear resize of cubic volumes by a separable interpolation matrix.

    Equals ``F.interpolate(..., mode="trilinear", align_corners=True)`` but runs as three small
    matrix products, which are much faster than interpolate's CPU kernels (forward and backward).

    Shapes:
        volumes ``(N, C, s, s, s)``; matrix ``(S, s)`` (:func:`interpolation_matrix`);
        returns ``(N, C, S, S, S)``.
    """
    return torch.einsum("ncdhw,zd,yh,xw->nczyx", volumes, matrix, matrix, matrix)


class CostEncoder(nn.Module):
    """Cubic cost volume -> feature vector per keypoint.

    A parameter-free soft-min pooling (``-max_pool(-cost)``, stride 2) halves the volume first;
    two strided 3D convolutions and a linear layer follow.

    Shapes:
        input ``(N, 1, S, S, S)``; output ``(N, features)``.
    """

    def __init__(self, side: int, channels: int = 16, features: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv3d(1, channels // 2, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv3d(channels // 2, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.1))
        reduced = side
        for _ in range(3):
            reduced = (reduced + 1) // 2
        self.project = nn.Sequential(nn.Linear(channels * reduced ** 3, features), nn.LeakyReLU(0.1))

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        pooled = -F.max_pool3d(-cost, 3, stride=2, padding=1)
        return self.project(self.convs(pooled).flatten(1))


class HeatmapDecoder(nn.Module):
    """Feature vector per keypoint -> logits over a cubic candidate grid.

    3x3x3 convolutions refine a small cube (``base`` up to ~``S / 4``); a 1x1x1 convolution maps
    the channels to one logit at ~``S / 2`` and a parameter-free trilinear upsampling brings it to
    ``S``. The full-resolution detail comes from the cost-derived logits the network adds this
    to; the decoder only has to supply a smooth correction (3D convolutions on CPU are slow in
    the backward pass, so the larger cubes get none).

    Shapes:
        input ``(N, features)``; output ``(N, S^3)``.
    """

    def __init__(self, side: int, features: int, channels: int = 8, base: int = 3) -> None:
        super().__init__()
        base = min(base, side)
        self.side, self.base, self.channels = side, base, channels
        self.expand = nn.Linear(features, channels * base ** 3)
        sizes = []
        size = side
        while size > base:
            sizes.append(size)
            size = (size + 1) // 2
        sizes = [base] + sizes[::-1]
        for index, (small, large) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.register_buffer(f"resize_{index}", interpolation_matrix(small, large), persistent=False)
        self.steps = len(sizes) - 1
        self.convs = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=1) for _ in range(max(self.steps - 2, 0)))
        self.out = nn.Conv3d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.expand(features).view(-1, self.channels, self.base, self.base, self.base)
        for index, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(resize_cubes(x, getattr(self, f"resize_{index}"))), 0.1)
        for index in range(len(self.convs), self.steps - 1):
            x = resize_cubes(x, getattr(self, f"resize_{index}"))
        x = self.out(x)
        if self.steps:
            x = resize_cubes(x, getattr(self, f"resize_{self.steps - 1}"))
        return x.flatten(1)


@register_architecture("graphregnet")
class GraphRegNet(LoadableModel):
    """Learned graph regulariser of keypoint cost volumes (see the module docstring).

    Args:
        radius: search radius in candidate steps; the cost volume is ``(2 radius + 1)^3``.
        step: candidate spacing (working voxels) the network is trained for.
        k: neighbours per keypoint in the kNN graph.
        features: width of the node features.
        encoder_channels, decoder_channels: widths of the 3D convolutions.
        edgeconv_layers: number of EdgeConv layers.
        coordinate_scale: keypoint coordinates (working voxels) are divided by this before they
            are appended to the features.
        graph: ``"edgeconv"``, ``"none"`` or ``"coordinates"`` (ablations).

    Shapes:
        forward(cost ``(N, L)``, keypoints ``(N, 3)``, edge_index ``(2, E)``) -> logits ``(N, L)``.
    """

    def __init__(self, radius: int = 8, step: float = 2.0, k: int = 15, features: int = 32, encoder_channels: int = 16,
                 decoder_channels: int = 8, edgeconv_layers: int = 3, coordinate_scale: float = 50.0,
                 graph: str = "edgeconv") -> None:
        super().__init__()
        if graph not in GRAPH_VARIANTS:
            raise ConfigError(f"model.graph: expected one of {', '.join(GRAPH_VARIANTS)}, got {graph!r}")
        if int(radius) < 1:
            raise ConfigError(f"model.radius: expected an integer >= 1, got {radius!r}")
        if int(k) < 1:
            raise ConfigError(f"model.k: expected an integer >= 1, got {k!r}")
        self.radius, self.step, self.k = int(radius), float(step), int(k)
        self.side = 2 * self.radius + 1
        self.graph = graph
        self.coordinate_scale = float(coordinate_scale)
        self.encoder = CostEncoder(self.side, encoder_channels, features)
        graph_in = features + 3 if graph == "edgeconv" else 3
        self.edge_convs = nn.ModuleList()
        width = graph_in
        if graph != "none":
            for _ in range(int(edgeconv_layers)):
                self.edge_convs.append(EdgeConv(_edge_mlp(width, features)))
                width = features
        decoder_in = features + width
        self.decoder = HeatmapDecoder(self.side, decoder_in, decoder_channels)
        self.log_beta = nn.Parameter(torch.tensor(math.log(2.0)))

    @staticmethod
    def normalise_cost(cost: torch.Tensor) -> torch.Tensor:
        """Per-keypoint standardised costs ``(cost - mean) / std`` (shape unchanged)."""
        mean = cost.mean(1, keepdim=True)
        std = cost.std(1, keepdim=True).clamp_min(1e-6)
        return (cost - mean) / std

    def forward(self, cost: torch.Tensor, keypoints: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n, count = cost.shape[0], self.side ** 3
        check_shape("cost", cost, f"(N, {count})", cost.ndim == 2 and cost.shape[1] == count)
        check_shape("keypoints", keypoints, f"({n}, 3)", keypoints.shape == (n, 3))
        normalised = self.normalise_cost(cost)
        code = self.encoder(normalised.view(n, 1, self.side, self.side, self.side))
        coords = (keypoints - keypoints.mean(0)) / self.coordinate_scale
        coords = coords.to(code)
        x = torch.cat([code, coords], 1) if self.graph == "edgeconv" else coords
        for conv in self.edge_convs:
            x = conv(x, edge_index)
        logits = self.decoder(torch.cat([code, x], 1))
        return logits - self.log_beta.exp() * normalised

