"""Server-side resource limits of the engine service: a per-job memory estimate and the caps
(`kiln serve --max-faces / --max-texture-size / --job-memory-gb`) that a client may lower
but never raise.

The estimate is of a job's peak host memory (RSS of its worker process):

    bytes = BASE + FACE * faces_in
          + (texture_size * supersample)^2 * (SAMPLE + CHANNEL * channels)
          + [GPU bake] views * view_resolution^2 * VIEW_PIXEL * channels

- ``faces_in``: faces of the input mesh. Unknown at submit, so the service takes the job's
  effective ``max_faces`` (min of the client's and the server's): the worker refuses a larger
  input at load, so the bound holds.
- ``channels``: baked maps (base color, normal, ORM, emissive ...); 4 when unknown.
- the constants were fitted to the peak RSS of real CPU bakes on the CI machine (numbers in
  docs/service.md, "Resource limits"; re-measure with ``benchmarks/service_memory.py``).

This module is plain arithmetic: no torch, no numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

MB = 1 << 20
GB = 1 << 30

BASE = 350 * MB
"""Interpreter, numpy/trimesh/Embree and the worker's imports."""
FACE = 450
"""Bytes per input face: source arrays, simplification, the ray-tracing BVH."""
SAMPLE = 130
"""Bytes per supersampled texel shared by all channels: surface positions, normals, rays, hits."""
CHANNEL = 40
"""Bytes per supersampled texel per baked channel: float accumulators, the least-squares fit, dilation."""
VIEW_PIXEL = 16
"""Host bytes per bake-view pixel per channel on the GPU path (read-back float RGBA)."""
DEFAULT_CHANNELS = 4
MEMORY_FRACTION = 0.8
"""Share of the machine's memory the service plans to use for all its workers together."""


def estimate_job_bytes(faces_in: int, texture_size: int, supersample: int = 2, views: int = 100,
                       view_resolution: int = 1024, channels: Optional[int] = None, device: str = "cpu") -> int:
    """Estimated peak host memory of one bake job (see the module docstring)."""
    ch = DEFAULT_CHANNELS if channels is None else max(1, int(channels))
    texels = (int(texture_size) * int(supersample)) ** 2
    total = BASE + FACE * int(faces_in) + texels * (SAMPLE + CHANNEL * ch)
    if device != "cpu":
        total += int(views) * int(view_resolution) ** 2 * VIEW_PIXEL * ch
    return int(total)


def machine_memory_bytes() -> Optional[int]:
    """Physical memory of this machine (None if unknown); a cgroup limit counts when lower."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit() and (total is None or int(raw) < total):
            total = int(raw)
    return total


@dataclass(frozen=True)
class Caps:
    """The limits a service enforces on every job."""

    max_faces: int
    max_texture_size: int
    job_memory_bytes: int
    """Memory one job may plan to use (the machine's share divided over the workers)."""

    def to_dict(self) -> dict:
        return {"max_faces": self.max_faces, "max_texture_size": self.max_texture_size, "job_memory_bytes": self.job_memory_bytes}


HARD_MAX_FACES = 8_000_000  # the engine's own default input cap (BakeOptions.max_faces)
HARD_MAX_TEXTURE = 8192


def default_caps(workers: int, memory_bytes: Optional[int] = None, max_faces: Optional[int] = None,
                 max_texture_size: Optional[int] = None, job_memory_bytes: Optional[int] = None) -> Caps:
    """Caps that fit the machine: each of ``workers`` jobs gets an equal share of MEMORY_FRACTION of
    the memory; the default texture cap is the largest power of two whose job (at 1M input faces,
    4 channels) fits that share, the default face cap the most input faces a 2048 (or the texture
    cap, if lower) texture leaves room for. Explicit values win."""
    mem = memory_bytes if memory_bytes is not None else (machine_memory_bytes() or 16 * GB)
    share = job_memory_bytes or int(mem * MEMORY_FRACTION / max(1, workers))
    if max_texture_size is None:
        max_texture_size = 256
        size = 512
        while size <= HARD_MAX_TEXTURE and estimate_job_bytes(1_000_000, size) <= share:
            max_texture_size = size
            size *= 2
    if max_faces is None:
        fixed = estimate_job_bytes(0, min(2048, max_texture_size))
        max_faces = int(max(10_000, min(HARD_MAX_FACES, (share - fixed) // FACE)))
    return Caps(int(max_faces), int(max_texture_size), int(share))


@dataclass(frozen=True)
class Refusal:
    """Why a job does not fit the caps: HTTP 422 code ``over_limit``."""

    message: str
    hint: str
    limit: dict


def check_job(options: dict, caps: Caps, given: frozenset = frozenset(), channels: Optional[int] = None,
              device: str = "cpu") -> tuple[dict, Optional[Refusal]]:
    """Apply ``caps`` to a job's validated options (a BakeOptions dict); ``given``: the option names
    the client sent.

    Returns (options with ``max_faces`` lowered to the server's cap when the client did not send
    one, refusal or None). A client's ``max_faces`` above the server's cap is refused, never raised.
    """
    opts = dict(options)
    limits = caps.to_dict()
    tex = int(opts.get("texture_size", 1024))
    if tex > caps.max_texture_size:
        return opts, Refusal(
            f"texture_size {tex} is over this server's limit of {caps.max_texture_size}",
            f"use texture_size {caps.max_texture_size} or less (the administrator sets it with kiln serve --max-texture-size)",
            limits,
        )
    faces = int(opts.get("max_faces", HARD_MAX_FACES))
    if faces > caps.max_faces:
        if "max_faces" in given:
            return opts, Refusal(
                f"max_faces {faces} is over this server's limit of {caps.max_faces} input faces",
                f"send max_faces {caps.max_faces} or less, or leave it out (the administrator sets it with kiln serve --max-faces)",
                limits,
            )
        faces = caps.max_faces
    opts["max_faces"] = faces
    ch = channels
    est = estimate_job_bytes(faces, tex, int(opts.get("supersample", 2)), int(opts.get("views", 100)),
                             int(opts.get("view_resolution", 1024)), ch, device)
    if est > caps.job_memory_bytes:
        fit_faces = (caps.job_memory_bytes - estimate_job_bytes(0, tex, int(opts.get("supersample", 2)), int(opts.get("views", 100)),
                                                                int(opts.get("view_resolution", 1024)), ch, device)) // FACE
        fit_tex = 0
        size = 16
        while size <= tex and estimate_job_bytes(faces, size, int(opts.get("supersample", 2)), int(opts.get("views", 100)),
                                                 int(opts.get("view_resolution", 1024)), ch, device) <= caps.job_memory_bytes:
            fit_tex = size
            size *= 2
        fits = []
        if fit_tex:
            fits.append(f"texture_size {fit_tex}")
        if fit_faces >= 4:
            fits.append(f"max_faces {int(fit_faces)} (inputs of at most that many faces)")
        return opts, Refusal(
            f"this job would need about {est / GB:.1f} GB of memory (input up to {faces} faces, texture {tex}, "
            f"{DEFAULT_CHANNELS if ch is None else ch} channel(s)); a job on this server may use {caps.job_memory_bytes / GB:.1f} GB",
            ("what fits: " + " or ".join(fits) if fits else "lower texture_size and max_faces")
            + "; the administrator sets the share with kiln serve --job-memory-gb or fewer --workers",
            limits,
        )
    return opts, None
