"""GraphRegNet: the learned graph regulariser of keypoint displacements (model, data, training)."""

from graphreg.methods.graphregnet.model import GRAPH_VARIANTS, GraphRegNet

__all__ = ["GRAPH_VARIANTS", "GraphRegNet"]
