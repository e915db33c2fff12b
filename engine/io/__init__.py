"""File formats: loading bake sources, writing GLB results."""
