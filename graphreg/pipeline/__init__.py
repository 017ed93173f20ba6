"""Stages of the keypoint registration pipeline (one module per stage)."""
