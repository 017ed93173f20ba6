"""Numerical operators on volumes and fields: filters, MIND-SSC, losses, metrics, the inverse field,
the lung mask.
"""
