"""How a run uses the machine: threads, device, memory reuse, optional dependencies.
"""
