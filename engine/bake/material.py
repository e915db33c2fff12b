"""Bake a whole material onto a target: every channel, through one backend, in one pass.

    hits (backend) -> channel values -> target frame -> finalize -> least-squares fit -> fill -> results

The backend finds hits for the texels of a grid ``supersample`` times finer
than the texture and blends the channels' values there (one pass over the
views / rays for all channels). The target's frame (hard edges, corner
normals, MikkTSpace tangents) is then fixed, the ``normal`` channel is
expressed in it, and each channel is fitted to the texture resolution by
least squares (engine.bake.fit) and filled (engine.bake.dilate). Channels
that are the same everywhere on the source are not baked at all: they become
factors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from engine.bake.channels import ChannelSet, channel_class
from engine.bake.channels.base import ChannelResult
from engine.bake.frames import corner_frame, texel_frame


@dataclass
class Target:
    """The mesh the material is baked onto (glTF UV convention)."""

    vertices: np.ndarray  # (n,3) float32
    faces: np.ndarray  # (m,3) int32
    uv: np.ndarray  # (n,2) float32
    normals: Optional[np.ndarray] = None  # (n,3): the artist's own normals, kept (target mode)
    cage: Optional[np.ndarray] = None  # (n,3): cage positions, same topology (rays start there)


@dataclass
class MaterialBake:
    results: dict  # name -> ChannelResult
    vertices: np.ndarray  # output mesh, split where normals / tangents differ per corner
    faces: np.ndarray
    uv: np.ndarray
    normals: np.ndarray
    tangents: np.ndarray
    vmap: np.ndarray  # output vertex -> target vertex
    coverage: np.ndarray  # (S,S) bool
    info: dict = field(default_factory=dict)


class _Sub:
    def __init__(self, progress, lo, hi):
        self.p, self.lo, self.hi = progress, lo, hi

    def update(self, f, msg=""):
        self.p.update(self.lo + (self.hi - self.lo) * f, msg)


def bake_material(src, target: Target, names, backend, *, texture_size: int, supersample: int, padding: int,
                  cage: float, options, progress_bake, progress_fit, view_renderer=None) -> MaterialBake:
    """``names``: channels to bake. ``cage``: ray distance in scene units. ``options``: passed to the
    backend for its view settings (views, view_resolution). progress_bake / progress_fit: Progress-like."""
    from engine.bake.surface import surface_for

    t0 = time.perf_counter()
    dev = backend.device
    surface = surface_for(src, dev)
    S = int(texture_size)
    k = int(supersample) if S * int(supersample) <= 8192 else 1  # 8K textures: point sampling
    S2 = S * k
    info: dict = {"supersample": k, "channels": list(names)}
    channels = {n: channel_class(n)(surface) for n in names}
    constants = {n: c.constant() for n, c in channels.items()}
    baked = [n for n in names if constants[n] is None]
    if view_renderer is not None:
        baked = [n for n in baked if n == "base"]
        for n in names:
            if n not in baked and constants[n] is None:
                constants[n] = np.asarray(channels[n].fill[: channels[n].out_size], np.float32)
                info.setdefault("not_from_splats", []).append(n)
    chset = ChannelSet([channels[n] for n in baked], surface) if baked else None

    observer = None
    with torch.no_grad():
        t_tex = time.perf_counter()
        texels = backend.texels(target.uv, target.faces, S2)
        P = texels.interp(np.asarray(target.vertices, np.float32))
        topology = None  # the target's edges, for its smooth normals here and its frame after the gather
        if target.normals is not None:
            N = texels.interp(np.asarray(target.normals, np.float32))
        else:
            from engine.mesh.normals import EdgeTopology, corner_normals

            topology = EdgeTopology.of(target.vertices, target.faces)
            N = texels.interp(corner_normals(target.vertices, target.faces, hard=None, topology=topology))
        N = N / N.norm(dim=1, keepdim=True).clamp_min(1e-12)
        origins = texels.interp(np.asarray(target.cage, np.float32)) if target.cage is not None else None
        progress_bake.update(0.05, f"{len(texels)} texels, {', '.join(baked) or 'constants only'}")
        info["texels_in_charts"] = texels.inside
        info["texel_seconds"] = round(time.perf_counter() - t_tex, 4)  # UV raster + positions and normals of the texels
        if chset is not None:
            sub = _Sub(progress_bake, 0.05, 0.95)
            if view_renderer is not None:
                vals, hit, binfo = backend.gather(surface, None, P, N, cage, options, sub, view_renderer=view_renderer)
                vals = torch.cat([vals[:, :3], torch.ones_like(vals[:, :1])], 1)  # splats: RGB, opaque
            else:
                observer = None
                fit_views = [channels[n] for n in baked if channels[n].view_fit]
                if fit_views and k == 2 and getattr(options, "view_fit", True):
                    observer = backend.view_observer(target, fit_views, S, cage)
                kw = {"observer": observer} if observer is not None else {}
                vals, hit, binfo = backend.gather(surface, chset.sample, P, N, cage, options, sub, origins=origins, **kw)
            vals, hit = vals.to(dev), hit.to(dev)
            info.update(binfo)
            info["gather_seconds"] = binfo.get("seconds")  # the backend's part (its 'seconds' is the whole bake's below)
        else:
            vals = torch.zeros((len(texels), 0), device=dev)
            hit = torch.ones(len(texels), dtype=torch.bool, device=dev)
            observer = None
        info["texels_missed"] = int((~hit).sum())
        progress_bake.update(0.97, "target frame")

        # the target's frame: kept (artist's normals) or with the source's hard edges
        t1 = time.perf_counter()
        wn = vals[:, chset.slices["normal"]] if chset is not None and "normal" in chset.slices else None
        cn, ct, finfo = corner_frame(target.vertices, target.faces, target.uv, texels, wn, hit, normals=target.normals,
                                     topology=topology)
        info.update(finfo)
        frame = texel_frame(texels, cn, ct) if "normal" in baked else None
        info["frame_seconds"] = round(time.perf_counter() - t1, 4)
        progress_bake.update(1.0)

        results: dict[str, ChannelResult] = {}
        cov_S = None
        fit_total = 0.0
        fit_cache: dict = {}  # the fit's coverage part, shared by the channels (same hits)
        fit_each: dict = {}
        for i, n in enumerate(names):
            ch = channels[n]
            sub = _Sub(progress_fit, i / len(names), (i + 1) / len(names))
            sub.update(0.0, f"{n}: fit" if constants[n] is None else f"{n}: constant")
            if constants[n] is not None:
                results[n] = ChannelResult(n, constant=np.asarray(constants[n], np.float32), meta=dict(ch.meta))
                continue
            tf = time.perf_counter()
            v = vals[:, chset.slices[n]][hit]
            out = ch.finalize(v, frame.subset(hit) if (frame is not None and n == "normal") else None)
            fine = torch.empty((len(texels), ch.out_size), device=dev)
            fine[:] = torch.as_tensor(ch.fill[: ch.out_size], device=dev)
            fine[hit] = out
            img = texels.scatter(fine, ch.fill[: ch.out_size])
            cov = texels.scatter(hit[:, None].float(), (0.0,))[..., 0] > 0.5
            if k > 1:
                from engine.bake.fit import fit_texture

                view = observer.equations(n) if observer is not None and n in observer.slices else None
                img, cov = fit_texture(img, cov, k, view=view, cache=fit_cache)
            from engine.bake.dilate import fill_and_dilate

            sub.update(0.7, f"{n}: fill")
            u8 = fill_and_dilate(img, cov, padding=padding, device=dev)
            cov_np = cov.cpu().numpy() if torch.is_tensor(cov) else np.asarray(cov)
            if cov_S is None:
                cov_S = cov_np
            results[n] = ch.result(u8, cov_np)
            fit_each[n] = round(time.perf_counter() - tf, 4)
            fit_total += fit_each[n]
        info["fit_seconds"] = round(fit_total, 4)
        info["fit_seconds_per_channel"] = fit_each  # finalize + LSQ fit + fill of each baked channel
        progress_fit.update(1.0)

    # output mesh: one normal and one tangent per vertex (split where corners differ)
    from engine.mesh.normals import split_by_corner

    if target.normals is not None and np.asarray(target.normals).ndim == 2:
        vmap, nf, (tv,) = split_by_corner(target.faces, ct, decimals=4, n_vertices=len(target.vertices))
        vn = np.asarray(target.normals, np.float32)[vmap]
        tv[np.linalg.norm(tv[:, :3], axis=1) < 0.5] = (1.0, 0.0, 0.0, 1.0)  # unused vertices (kept as they are)
    else:
        vmap, nf, (vn, tv) = split_by_corner(target.faces, cn, ct, decimals=5)
    if cov_S is None:
        cov_S = np.zeros((S, S), bool)
    info["seconds"] = round(time.perf_counter() - t0, 4)
    return MaterialBake(
        results=results,
        vertices=np.asarray(target.vertices, np.float32)[vmap],
        faces=nf,
        uv=np.asarray(target.uv, np.float32)[vmap],
        normals=vn,
        tangents=tv,
        vmap=vmap,
        coverage=cov_S,
        info=info,
    )
