"""The in-memory form of a Gaussian-splat source: plain numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SH_C0 = 0.28209479177387814
"""Zeroth spherical-harmonics basis constant: colour = SH_C0 * f_dc + 0.5."""


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(N, 4) wxyz quaternions -> (N, 3, 3) rotation matrices (column-vector convention)."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit wxyz quaternion."""
    R = np.asarray(R, np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


@dataclass
class Splats:
    means: np.ndarray  # (N, 3) float32 world positions
    scales: np.ndarray  # (N, 3) float32 standard deviations along the local axes (linear, > 0)
    quats: np.ndarray  # (N, 4) float32 unit quaternions, w x y z
    opacities: np.ndarray  # (N,) float32 in (0, 1)
    sh: np.ndarray  # (N, K, 3) float32 SH coefficients, K = (sh_degree + 1) ** 2, sh[:, 0] = DC
    name: str = "splat"
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.means))

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.sh.shape[1]))) - 1

    def base_colors(self) -> np.ndarray:
        """(N, 3) sRGB in [0, 1] from the DC term only (view-independent colour)."""
        return np.clip(SH_C0 * self.sh[:, 0, :] + 0.5, 0.0, 1.0).astype(np.float32)

    def bounds(self, min_opacity: float = 0.1, quantile: float = 0.0) -> np.ndarray:
        """(2, 3) box of the centres of Gaussians with opacity >= ``min_opacity``
        (all when none qualifies); ``quantile`` > 0 trims outliers on each side."""
        sel = self.opacities >= min_opacity
        m = self.means[sel] if sel.any() else self.means
        if quantile > 0:
            return np.stack([np.quantile(m, quantile, axis=0), np.quantile(m, 1 - quantile, axis=0)]).astype(np.float64)
        return np.stack([m.min(0), m.max(0)]).astype(np.float64)

    def subset(self, keep: np.ndarray) -> "Splats":
        return Splats(self.means[keep], self.scales[keep], self.quats[keep], self.opacities[keep], self.sh[keep], self.name, dict(self.info))

    def transformed(self, R: np.ndarray, t: np.ndarray | None = None, s: float = 1.0) -> "Splats":
        """Apply x -> s R x + t (R a proper rotation, s > 0) to every Gaussian,
        rotating the quaternions and scaling the sizes. View-dependent SH
        (degree > 0) is not rotated: its coefficients are dropped to DC."""
        R = np.asarray(R, np.float64)
        t = np.zeros(3) if t is None else np.asarray(t, np.float64)
        means = (s * (self.means.astype(np.float64) @ R.T) + t).astype(np.float32)
        qr = matrix_to_quat(R)
        quats = quat_multiply(qr[None], self.quats.astype(np.float64))
        quats /= np.linalg.norm(quats, axis=1, keepdims=True)
        sh = self.sh if self.sh.shape[1] == 1 or np.allclose(R, np.eye(3)) else self.sh[:, :1]
        return Splats(means, (self.scales * s).astype(np.float32), quats.astype(np.float32), self.opacities.copy(), sh.copy(), self.name, dict(self.info))
