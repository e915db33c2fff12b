"""Pinhole cameras around a bounding sphere.

Convention: OpenCV camera (x right, y down, z forward), pixel (u, v) with v
down, image row 0 at the top. ``gl_mvp`` gives the matching clip-space matrix
for nvdiffrast, whose output rows then come out in the same order.
Bake views and held-out evaluation views come from two different spherical
Fibonacci sets, so no held-out view coincides with a bake view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GOLDEN = (1 + 5**0.5) / 2


@dataclass
class Camera:
    R: np.ndarray  # (3,3) world -> camera rotation
    t: np.ndarray  # (3,) world -> camera translation
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float
    far: float

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    def viewmat(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def gl_mvp(self) -> np.ndarray:
        W, H, n, f = self.width, self.height, self.near, self.far
        P = np.array(
            [
                [2 * self.fx / W, 0, 2 * self.cx / W - 1, 0],
                [0, 2 * self.fy / H, 2 * self.cy / H - 1, 0],
                [0, 0, (f + n) / (f - n), -2 * f * n / (f - n)],
                [0, 0, 1, 0],
            ]
        )
        return P @ self.viewmat()

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel (H*W, 3) origins and unit directions, row-major from the top-left pixel."""
        v, u = np.meshgrid(np.arange(self.height) + 0.5, np.arange(self.width) + 0.5, indexing="ij")
        d = np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], -1).reshape(-1, 3)
        d = d @ self.R  # camera -> world: R^T d, written row-wise
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(self.center, d.shape)
        return np.ascontiguousarray(o, np.float32), np.ascontiguousarray(d, np.float32)


def fibonacci_directions(n: int, offset: float = 0.0) -> np.ndarray:
    """n roughly uniform unit vectors; a different ``offset`` gives an interleaved set."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1 - 2 * i / n
    phi = 2 * np.pi * (i / GOLDEN + offset)
    r = np.sqrt(np.maximum(0, 1 - z * z))
    return np.stack([r * np.cos(phi), z, r * np.sin(phi)], 1)  # y is up


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    up = np.asarray(up, np.float64)
    if abs(np.dot(fwd, up)) > 0.999:
        up = np.array([0.0, 0.0, 1.0])
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in world
    return R, -R @ eye


def sphere_cameras(center, radius: float, n: int, resolution: int, fov_deg: float = 40.0, offset: float = 0.0, margin: float = 1.05) -> list[Camera]:
    center = np.asarray(center, np.float64)
    radius = max(float(radius), 1e-9)
    half = np.radians(fov_deg) / 2
    dist = radius * margin / np.sin(half)
    f = resolution / 2 / np.tan(half)
    cams = []
    for d in fibonacci_directions(n, offset):
        R, t = look_at(center + d * dist, center)
        cams.append(Camera(R, t, f, f, resolution / 2, resolution / 2, resolution, resolution, max(dist - radius * 1.5, dist * 1e-3), dist + radius * 1.5))
    return cams


def bounding_sphere(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = vertices.min(0).astype(np.float64), vertices.max(0).astype(np.float64)
    c = (lo + hi) / 2
    r = float(np.linalg.norm(vertices.astype(np.float64) - c, axis=1).max())
    return c, r


BAKE_OFFSET = 0.0
HELDOUT_OFFSET = 0.5  # interleaves with the bake set's golden-angle spiral
