"""Mesh stage modules: source representation, validation, simplification."""
