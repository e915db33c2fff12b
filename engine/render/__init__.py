"""Cameras and renderers (CPU: Embree ray casting; CUDA: nvdiffrast) of Kiln meshes."""
