"""The ``normal`` channel: a tangent-space normal map of the source's shading normal.

``sample`` gives the source's shading normal at a hit, in world space: its own
normals interpolated (split where the source has hard edges; for a source
without normals, smooth vertex normals except where a face turns more than
30 degrees away, see ``source_corner_normals``), perturbed by the source's own normal map through its
MikkTSpace frame (its TANGENT attribute, or tangents computed here).

``finalize`` expresses the blended world normal of each texel in the
target's frame exactly as a viewer decodes it -- Blender's Normal Map node,
glTF: n = normalize(x T + y B + z N) with the interpolated MikkTSpace tangent
T, the normalised interpolated normal N and B = w cross(N, T) -- by solving
that 3x3 system per texel, then stores 0.5 + 0.5 (x, y, z).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.bake.channels.base import Channel

SOURCE_SMOOTH_ANGLE = 30.0  # degrees: sources without normals are shaded smooth below this dihedral angle


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def source_corner_normals(src, device="cpu") -> torch.Tensor:
    """Shading normal per face corner (F,3,3) of a source, on ``device``.

    The source's own normals where it has them. Otherwise (PLY scans, OBJ without vn) every corner takes
    its vertex's smooth normal (area-weighted, vertices welded by position) unless its face turns away
    from it by more than SOURCE_SMOOTH_ANGLE, then the face's own normal: a cube stays flat, a scan
    stays smooth, and it costs a few tensor ops even for millions of faces.
    """
    faces = torch.as_tensor(np.asarray(src.faces, np.int64), device=device)
    if src.normals is not None:
        return torch.as_tensor(np.asarray(src.normals, np.float32), device=device)[faces]
    from engine.mesh.simplify import unique_rows

    _, key = unique_rows(np.asarray(src.vertices))
    key = torch.as_tensor(key, device=device)
    v = torch.as_tensor(np.asarray(src.vertices, np.float32), device=device)
    t = v[faces]
    fn = torch.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=1)  # area-weighted
    k = key[faces]
    acc = torch.zeros((int(key.max()) + 1, 3), device=device).index_add_(0, k.reshape(-1), fn.repeat_interleave(3, 0))
    vn = _unit(acc)[k]  # (F,3,3)
    fu = _unit(fn)[:, None, :].expand(-1, 3, -1)
    keep = (vn * fu).sum(-1, keepdim=True) >= float(np.cos(np.radians(SOURCE_SMOOTH_ANGLE)))
    return torch.where(keep, vn, fu).contiguous()


def world_from_tangent(c: torch.Tensor, T: torch.Tensor, w: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    """Decode tangent-space vectors c (K,3) with frames (T, w, N) as Blender / glTF viewers do."""
    N = _unit(N)
    B = w[:, None] * torch.cross(N, T, dim=-1)
    return _unit(c[:, :1] * T + c[:, 1:2] * B + c[:, 2:3] * N)


def _rows(v: torch.Tensor) -> list:
    """(K,3) -> its three components as contiguous (K,) vectors (elementwise ops on them vectorise; on (K,3)
    rows every op strides over 3 values)."""
    return list(v.t().contiguous().unbind(0))


def _cross3(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _dot3(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _unit3(a):
    ln = torch.sqrt(_dot3(a, a)).clamp_min(1e-12)
    return [x / ln for x in a]


def _tangent_from_world3(n, T, w, N):
    """tangent_from_world on component vectors ([x, y, z], each (K,)) -> [cx, cy, cz]."""
    N = _unit3(N)
    B = [w * x for x in _cross3(N, T)]
    # rows of the inverse of [T B N] (columns): (B x N, N x T, T x B) / det
    r0 = _cross3(B, N)
    r1 = _cross3(N, T)
    r2 = _cross3(T, B)
    det = _dot3(T, r0)
    det = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
    c = _unit3([_dot3(r0, n) / det, _dot3(r1, n) / det, _dot3(r2, n) / det])
    # a source normal facing away from the target's hemisphere cannot be stored: keep it at the horizon
    low = c[2] < 0.02
    if bool(low.any()):
        h = _unit3([c[0], c[1], 0.02 * torch.sqrt(c[0] * c[0] + c[1] * c[1]).clamp_min(1e-6)])
        c = [torch.where(low, a, b) for a, b in zip(h, c)]
    return c


def tangent_from_world(n: torch.Tensor, T: torch.Tensor, w: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    """The inverse of world_from_tangent: unit c (K,3), z >= 0, with normalize(c.x T + c.y B + c.z N) = n."""
    return torch.stack(_tangent_from_world3(_rows(n), _rows(T), w, _rows(N)), 1)


class NormalChannel(Channel):
    name = "normal"
    size = 3
    out_size = 3
    fill = (0.5, 0.5, 1.0)

    @classmethod
    def present(cls, src) -> bool:
        return any(m.normal is not None for m in src.materials)

    def _corner_normals(self) -> torch.Tensor:
        s = self.surface
        return s.tensor("corner_normals", lambda: source_corner_normals(s.src, s.device))

    def _corner_tangents(self, k: int) -> torch.Tensor | None:
        s = self.surface
        src = s.src

        def make():
            if k == 0 and src.tangents is not None:
                t = np.asarray(src.tangents, np.float32)[np.asarray(src.faces, np.int64)]
                if np.isfinite(t).all() and (np.linalg.norm(t[..., :3], axis=-1) > 1e-6).all():
                    return torch.as_tensor(t, device=s.device)
                src.ignored_features.append("invalid TANGENT attribute (recomputed with MikkTSpace)")
            uv = src.uv_set(k)
            if uv is None:
                return None
            from engine.mesh.tangents import corner_tangents

            cn = self._corner_normals().cpu().numpy()
            return torch.as_tensor(corner_tangents(src.vertices, src.faces, cn, uv), device=s.device)

        return s.tensor(("corner_tangents", k), make)

    def sample(self, face, bary):
        s = self.surface
        n = _unit(s.interp(self._corner_normals(), face, bary))

        def apply(mi, m, sel):
            ref = m.normal
            ct = self._corner_tangents(ref.texcoord)
            if ct is None:
                return
            t = s.sample(ref, face[sel], bary[sel], srgb=False)
            if t is None or t.shape[1] < 3:
                return
            c = t[:, :3] * 2.0 - 1.0
            c = torch.cat([c[:, :2] * float(m.normal_scale), c[:, 2:]], 1)
            T = s.interp(ct[..., :3], face[sel], bary[sel])
            w = torch.sign(ct[face[sel], 0, 3])
            w = torch.where(w == 0, torch.ones_like(w), w)
            n[sel] = world_from_tangent(c, T, w, n[sel])

        s.per_material(face, lambda m: m.normal, apply)
        return n

    def finalize(self, values, frame=None):
        if frame is None:
            raise ValueError("the normal channel needs the target's tangent frame")
        from engine.bake.threads import run_split, single_thread

        K = values.shape[0]
        out = torch.empty((K, 3), device=values.device, dtype=values.dtype)
        cpu = values.device.type == "cpu"
        step = 262_144 if cpu else max(K, 1)  # CPU: blocks that stay in cache, on all cores

        def blocks(g):
            for a in g:
                b = min(K, a + step)
                c = _tangent_from_world3(_unit3(_rows(values[a:b])), _rows(frame.tangent[a:b]), frame.sign[a:b], _rows(frame.normal[a:b]))
                out[a:b] = torch.stack([(x * 0.5 + 0.5).clamp_(0.0, 1.0) for x in c], 1)

        with single_thread(values.device) as threads:
            run_split(blocks, list(range(0, K, step)), threads if cpu else 1)
        return out

    @classmethod
    def gltf(cls, res, material, add_texture):
        if res.image is None:
            return  # flat everywhere: the geometry's own normals say it all
        material["normalTexture"] = {"index": add_texture(res.image, "normal")}
