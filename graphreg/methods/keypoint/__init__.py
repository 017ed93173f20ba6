"""The keypoint methods (``corrfield``, ``graphregnet``): Förstner keypoints, correlation search, a graph
regulariser, densification and Adam instance optimisation, one module per stage.
"""
