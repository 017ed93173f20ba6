"""The registration methods: their registry, the one path every method runs through (prepare ->
estimate -> wrap), and each method family.
"""
