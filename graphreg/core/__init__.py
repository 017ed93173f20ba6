"""The objects every part of graphreg shares: grids in physical space, volumes, displacement fields,
warping, and the configuration.
"""
