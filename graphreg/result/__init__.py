"""What a registration gives: the :class:`Registration` object, its outputs, the result folder read
back, and mapping images and points through it either way.
"""
