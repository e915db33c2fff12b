"""Read and write standard 3D Gaussian Splatting PLY files.

The format (as written by the reference 3DGS trainer, gsplat, SAM 3D, TRELLIS):
one ``vertex`` element with float properties

    x y z                      centre
    [nx ny nz]                 ignored
    f_dc_0 f_dc_1 f_dc_2       SH DC coefficient per channel
    f_rest_0 .. f_rest_{3M-1}  optional higher SH bands, channel-major
                               (all of R's M coefficients, then G's, then B's),
                               M = 3, 8 or 15 for degree 1, 2, 3
    opacity                    logit of the opacity
    scale_0 scale_1 scale_2    log of the standard deviations
    rot_0 rot_1 rot_2 rot_3    quaternion w x y z (not necessarily unit)

Binary little/big endian and ASCII PLYs are read with numpy only. Invalid
Gaussians (non-finite values, zero quaternion) are dropped and counted; a file
with none left, missing properties, a truncated body or a compressed layout
raises InputError with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from engine.errors import InputError
from engine.splat.types import Splats

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
MAX_HEADER = 1 << 16
MAX_LOG_SCALE = 30.0


class PlyHeader:
    def __init__(self, fmt: str, elements: list, header_len: int):
        self.format = fmt  # ascii | binary_little_endian | binary_big_endian
        self.elements = elements  # [(name, count, [(prop, type or ('list', ct, it))])]
        self.header_len = header_len

    def element(self, name: str):
        for e in self.elements:
            if e[0] == name:
                return e
        return None


def read_header(f, name: str = "file") -> PlyHeader:
    """Parse a PLY header from an open binary file; InputError when it is not one."""
    data = f.read(MAX_HEADER)
    if not data.startswith(b"ply"):
        raise InputError(f"'{name}' is not a PLY file", hint="pass a 3D Gaussian Splatting .ply", code="unsupported_format")
    end = data.find(b"end_header")
    if end < 0:
        raise InputError(f"'{name}': PLY header is truncated or too long (no end_header)", hint="export the file again", code="corrupt_file")
    nl = data.find(b"\n", end)
    if nl < 0:
        raise InputError(f"'{name}': PLY header is truncated", hint="export the file again", code="corrupt_file")
    text = data[:end].decode("ascii", errors="replace")
    fmt = None
    elements: list = []
    for raw in text.splitlines()[1:]:
        parts = raw.strip().split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format" and len(parts) >= 2:
            fmt = parts[1]
        elif parts[0] == "element" and len(parts) == 3:
            try:
                elements.append((parts[1], int(parts[2]), []))
            except ValueError:
                raise InputError(f"'{name}': bad PLY element line {raw!r}", code="corrupt_file") from None
        elif parts[0] == "property" and elements:
            if len(parts) == 5 and parts[1] == "list":
                elements[-1][2].append((parts[4], ("list", parts[2], parts[3])))
            elif len(parts) == 3:
                if parts[1] not in PLY_TYPES:
                    raise InputError(f"'{name}': unknown PLY property type {parts[1]!r}", code="corrupt_file")
                elements[-1][2].append((parts[2], parts[1]))
            else:
                raise InputError(f"'{name}': bad PLY property line {raw!r}", code="corrupt_file")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"'{name}': unsupported PLY format {fmt!r}", code="unsupported_format")
    return PlyHeader(fmt, elements, nl + 1)


def _props(h: PlyHeader) -> list[str]:
    v = h.element("vertex")
    return [p for p, _ in v[2]] if v else []


def _is_compressed(h: PlyHeader) -> bool:
    props = _props(h)
    return h.element("chunk") is not None or any(p.startswith("packed_") for p in props)


def is_splat_ply(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` is a PLY whose vertices carry Gaussian-splat properties
    (standard layout, or the compressed 'packed_*' layout, which load_splat_ply refuses with a reason)."""
    try:
        with open(path, "rb") as f:
            h = read_header(f, Path(path).name)
    except (InputError, OSError):
        return False
    props = set(_props(h))
    if _is_compressed(h):
        return True
    return {"x", "y", "z", "opacity", "scale_0", "rot_0", "f_dc_0"} <= props


def load_splat_ply(path: Union[str, os.PathLike], min_opacity: float = 0.0) -> Splats:
    """Load and validate a 3DGS PLY -> Splats (activated values).

    Gaussians with opacity below ``min_opacity`` are dropped as well.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file not found: {p}", hint="check the path", code="missing_file")
    if p.is_dir():
        raise InputError(f"'{p}' is a folder, not a splat PLY", code="unsupported_format")
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"file is empty: {p.name}", hint="the file has 0 bytes; export it again", code="empty_file")
    with open(p, "rb") as f:
        h = read_header(f, p.name)
    if _is_compressed(h):
        raise InputError(
            f"'{p.name}' is a compressed splat PLY (packed_* / chunk layout), which Kiln does not read",
            hint="decompress it to a standard 3DGS PLY first (e.g. with SuperSplat: export as uncompressed .ply)",
            code="unsupported_format",
        )
    v = h.element("vertex")
    if v is None:
        raise InputError(f"'{p.name}' has no vertex element: not a Gaussian-splat PLY", code="unsupported_format")
    props = [q for q, _ in v[2]]
    missing = [r for r in REQUIRED if r not in props]
    if missing:
        raise InputError(
            f"'{p.name}' is not a 3D Gaussian Splatting PLY: missing {', '.join(missing)}",
            hint="expected x y z, f_dc_0..2, opacity, scale_0..2, rot_0..3 per vertex (a mesh PLY bakes with `kiln bake` directly)",
            code="not_a_splat",
        )
    n = v[1]
    if n <= 0:
        raise InputError(f"'{p.name}' holds no Gaussians (0 vertices)", code="empty_file")
    rest = sorted((q for q in props if q.startswith("f_rest_")), key=lambda s: int(s[7:]) if s[7:].isdigit() else -1)
    if rest:
        if [q for q in rest] != [f"f_rest_{i}" for i in range(len(rest))]:
            raise InputError(f"'{p.name}': f_rest_* properties are not numbered 0..{len(rest) - 1}", code="corrupt_file")
        if len(rest) not in (9, 24, 45):
            raise InputError(
                f"'{p.name}': {len(rest)} f_rest_* properties; expected 9, 24 or 45 (SH degree 1, 2, 3)",
                code="corrupt_file",
            )

    data = _read_vertices(p, h, size)

    def col(name):
        return np.asarray(data[name], dtype=np.float64)

    means = np.stack([col("x"), col("y"), col("z")], 1)
    log_s = np.stack([col("scale_0"), col("scale_1"), col("scale_2")], 1)
    quats = np.stack([col("rot_0"), col("rot_1"), col("rot_2"), col("rot_3")], 1)
    logit = col("opacity")
    dc = np.stack([col("f_dc_0"), col("f_dc_1"), col("f_dc_2")], 1)
    m = len(rest) // 3
    if m:
        fr = np.stack([col(q) for q in rest], 1).reshape(n, 3, m).transpose(0, 2, 1)
        sh = np.concatenate([dc[:, None, :], fr], axis=1)
    else:
        sh = dc[:, None, :]

    qn = np.linalg.norm(quats, axis=1)
    ok = (
        np.isfinite(means).all(1)
        & np.isfinite(log_s).all(1)
        & (log_s <= MAX_LOG_SCALE).all(1)
        & np.isfinite(quats).all(1)
        & (qn > 1e-12)
        & np.isfinite(logit)
        & np.isfinite(sh.reshape(n, -1)).all(1)
    )
    opac = 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))
    ok &= opac >= min_opacity
    dropped = int(n - ok.sum())
    if not ok.any():
        raise InputError(
            f"'{p.name}': none of its {n} Gaussians is valid (non-finite values, zero rotations{' or opacity below ' + str(min_opacity) if min_opacity > 0 else ''})",
            hint="export the splat again",
            code="corrupt_file",
        )
    quats = quats[ok] / qn[ok, None]
    return Splats(
        means=means[ok].astype(np.float32),
        scales=np.exp(log_s[ok]).astype(np.float32),
        quats=quats.astype(np.float32),
        opacities=opac[ok].astype(np.float32),
        sh=sh[ok].astype(np.float32),
        name=p.stem,
        info={"gaussians_in": int(n), "gaussians_dropped": dropped, "sh_degree": int(round(np.sqrt(sh.shape[1]))) - 1, "format": h.format},
    )


def _read_vertices(p: Path, h: PlyHeader, size: int) -> np.ndarray:
    v = h.element("vertex")
    if any(isinstance(t, tuple) for _, t in v[2]):
        raise InputError(f"'{p.name}': list properties on vertices are not supported in a splat PLY", code="corrupt_file")
    if h.format == "ascii":
        return _read_ascii(p, h)
    endian = "<" if h.format == "binary_little_endian" else ">"
    dtype = np.dtype([(q, endian + PLY_TYPES[t]) for q, t in v[2]])
    offset = h.header_len
    for name, count, props in h.elements:
        if name == "vertex":
            break
        if any(isinstance(t, tuple) for _, t in props):
            raise InputError(f"'{p.name}': a list-valued element precedes the vertices; not a splat PLY Kiln can read", code="unsupported_format")
        offset += count * np.dtype([(q, endian + PLY_TYPES[t]) for q, t in props]).itemsize
    need = offset + v[1] * dtype.itemsize
    if size < need:
        raise InputError(
            f"'{p.name}' is truncated: {size} bytes, the header announces {v[1]} Gaussians needing {need}",
            hint="the download or export was cut short; get the file again",
            code="corrupt_file",
        )
    return np.fromfile(p, dtype=dtype, count=v[1], offset=offset)


def _read_ascii(p: Path, h: PlyHeader) -> np.ndarray:
    v = h.element("vertex")
    skip = 0
    for name, count, _ in h.elements:
        if name == "vertex":
            break
        skip += count
    with open(p, "rb") as f:
        f.seek(h.header_len)
        lines = f.read().decode("ascii", errors="replace").splitlines()
    rows = [ln for ln in lines if ln.strip()][skip : skip + v[1]]
    if len(rows) < v[1]:
        raise InputError(f"'{p.name}' is truncated: {len(rows)} of {v[1]} Gaussians present", code="corrupt_file")
    try:
        arr = np.array([[float(x) for x in r.split()[: len(v[2])]] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"'{p.name}': bad number in the vertex data ({e})", code="corrupt_file") from None
    if arr.ndim != 2 or arr.shape[1] != len(v[2]):
        raise InputError(f"'{p.name}': vertex rows have the wrong number of values", code="corrupt_file")
    out = np.empty(v[1], dtype=[(q, "f8") for q, _ in v[2]])
    for i, (q, _) in enumerate(v[2]):
        out[q] = arr[:, i]
    return out


def save_splat_ply(path: Union[str, os.PathLike], splats: Splats) -> Path:
    """Write ``splats`` as a standard binary little-endian 3DGS PLY (inverse activations)."""
    p = Path(path)
    n = splats.n
    k = splats.sh.shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(n, dtype=[(q, "<f4") for q in names])
    for i, c in enumerate("xyz"):
        arr[c] = splats.means[:, i]
    for i in range(3):
        arr[f"f_dc_{i}"] = splats.sh[:, 0, i]
    if k > 1:
        rest = splats.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)  # channel-major
        for i in range(rest.shape[1]):
            arr[f"f_rest_{i}"] = rest[:, i]
    o = np.clip(splats.opacities.astype(np.float64), 1e-7, 1 - 1e-7)
    arr["opacity"] = np.log(o / (1 - o))
    for i in range(3):
        arr[f"scale_{i}"] = np.log(np.maximum(splats.scales[:, i], 1e-30))
    for i in range(4):
        arr[f"rot_{i}"] = splats.quats[:, i]
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join(f"property float {q}\n" for q in names) + "end_header\n"
    with open(p, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(arr.tobytes())
    return p
