"""The target's shading frame: which edges are hard, its corner normals and MikkTSpace tangents.

A simplified target keeps the source's hard edges: a low-poly edge is hard
when the source's shading normals just either side of it (the ``normal``
channel's blended world normals at texels near the edge, so no extra rays)
turn by at least half the edge's dihedral angle, and the edge itself bends by
more than 15 degrees. A cube stays a cube (90 degree turn on both counts); a
smooth blob whose low-poly edges bend by 25 degrees stays smooth (its source
normals barely turn across them), and whatever the split normals miss, the
normal map, baked relative to exactly these normals and tangents, restores.
Without baked normals (``--maps base``) an edge is hard above 45 degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_HARD_DEG = 15.0
FALLBACK_HARD_DEG = 45.0
FEW = 4  # texels a side needs before its baked normals are trusted


@dataclass
class Frame:
    """Per-texel target frame, as a viewer interpolates it."""

    normal: torch.Tensor  # (T,3) unit
    tangent: torch.Tensor  # (T,3) interpolated (not renormalised, like Blender)
    sign: torch.Tensor  # (T,) +-1

    def subset(self, sel) -> "Frame":
        if torch.is_tensor(sel) and sel.dtype == torch.bool and sel.numel() == self.sign.numel() and bool(sel.all()):
            return self  # every texel hit (the usual case): no copies
        return Frame(self.normal[sel], self.tangent[sel], self.sign[sel])


def corner_frame(vertices, faces, uv, texels=None, world_normals=None, hit=None, normals=None, topology=None):
    """Corner normals (F,3,3) and MikkTSpace corner tangents (F,3,4) of the target.

    ``normals`` (N,3): the target's own normals (kept as they are: the artist's mesh). Otherwise hard edges
    come from the baked world normals (see the module doc); ``topology``: the target's
    ``engine.mesh.normals.EdgeTopology``, when the caller has it already."""
    from engine.mesh.normals import corner_normals
    from engine.mesh.tangents import corner_tangents

    f = np.asarray(faces, np.int64)
    info = {}
    if normals is not None:
        normals = np.asarray(normals, np.float32)
        cn = normals if normals.ndim == 3 else normals[f]
        info["normals"] = "target's own" if normals.ndim == 2 else "target's, recomputed (smooth below 30 degrees)"
    else:
        if topology is None:
            from engine.mesh.normals import EdgeTopology

            topology = EdgeTopology.of(vertices, f)
        if world_normals is None:
            hard = lambda fa, fb, ka, kb, dih: dih > np.radians(FALLBACK_HARD_DEG)  # noqa: E731
            info["hard_edges"] = f"dihedral > {FALLBACK_HARD_DEG:g} deg (no baked normals)"
        else:
            b = texels.bary
            bmin, kmin = b.min(1)
            near = (bmin < 0.2) & (bmin > -1e-4) & hit  # inside the face (the edge ring lies beyond it)
            he = (texels.face * 3 + (kmin + 1) % 3)[near]
            n = world_normals[near]
            n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)
            F = len(f)
            acc = torch.zeros((3 * F, 3), device=n.device, dtype=n.dtype).index_add_(0, he, n).cpu().numpy().astype(np.float64)
            cnt = torch.zeros((3 * F,), device=n.device, dtype=n.dtype).index_add_(0, he, torch.ones_like(n[:, 0])).cpu().numpy()

            def hard(fa, fb, ka, kb, dih):
                ha, hb = fa * 3 + ka, fb * 3 + kb
                sa, sb = acc[ha], acc[hb]
                sa = sa / np.maximum(np.linalg.norm(sa, axis=1, keepdims=True), 1e-12)
                sb = sb / np.maximum(np.linalg.norm(sb, axis=1, keepdims=True), 1e-12)
                turn = np.arccos(np.clip((sa * sb).sum(1), -1.0, 1.0))
                enough = (cnt[ha] >= FEW) & (cnt[hb] >= FEW)
                by_source = (turn >= 0.5 * dih) & (dih > np.radians(MIN_HARD_DEG))
                return np.where(enough, by_source, dih > np.radians(FALLBACK_HARD_DEG))

            info["hard_edges"] = "from the source's baked normals"
        counted = {}

        def hard_counted(fa, fb, ka, kb, dih):
            h = np.asarray(hard(fa, fb, ka, kb, dih), bool)
            counted["n"] = int(h.sum())
            return h

        cn = corner_normals(vertices, f, hard=hard_counted, topology=topology)
        info["hard_edge_count"] = counted.get("n", 0)
    ct = corner_tangents(vertices, f, cn, uv)
    return cn, ct, info


def texel_frame(texels, cn: np.ndarray, ct: np.ndarray) -> Frame:
    dev = texels.face.device
    nt = texels.interp(np.concatenate([np.asarray(cn, np.float32), np.asarray(ct[..., :3], np.float32)], -1))  # one gather
    n = nt[:, :3]
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t = nt[:, 3:].contiguous()
    s = torch.as_tensor(ct[:, 0, 3], device=dev)[texels.face]
    return Frame(n, t, torch.where(s == 0, torch.ones_like(s), s))
