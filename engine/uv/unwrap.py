"""UV-unwrap a low-poly mesh with xatlas.

Returns UVs in Kiln's convention (glTF: v down, row = v * H). Options, chosen
deliberately (issue 12). Measured with the installed xatlas 0.0.11 (a release
build: its debug asserts are compiled out) on 16K-face targets of the pebble,
the Stanford bunny, a 300-box "blocks" soup, the 4K Duck and the 1K monkey,
and on the 5.2M-face pebble's 20K target at 2048^2, each in 4 orientations;
"coverage" is the share of the texture's texel centres inside a chart
(more = more texels on the surface):

  * Time goes to chart computation: ComputeCharts 2.3 s, PackCharts 0.2 s for
    the 16K pebble as one mesh. Packing is single-threaded, 0.06-0.5 s.
    Chart growing costs more than linearly in a mesh's faces and xatlas charts
    each mesh on its own thread, so the target is split into spatial parts
    (``auto_parts``): from 4K faces on one per ~1,000 faces, at most 16 (was
    one per ~4,000 from 8K faces, at most 8). 16K pebble: 16 parts take 1.1 s
    of CPU in all (4 parts 1.7 s, 1 part 2.0 s) and the longest part 0.17 s
    (4 parts 1.0 s), so with 16 cores charts take about as long as packing. Connected pieces smaller than half a
    part are never cut between parts (cutting the 300 boxes into 16 parts
    added 850 charts and lost 12% of the coverage).
  * The mesh is centred and scaled to a mean face area of 1 first. xatlas is
    not scale invariant: its texelsPerUnit estimate treats a surface under
    0.75 units^2 as 0.75, so small objects (the bunny, 0.057 m^2) were packed
    into a 460^2 corner then stretched over the texture (9-texel gaps,
    coverage 0.32); faces under its absolute area epsilon get no UVs (14 of
    the bunny's), and a 2.5 cm object got no charts at all.
  * Before -> after (mean of 4 orientations; CPU seconds on the 2-core dev
    box): pebble coverage 0.52 -> 0.59, CPU 2.2 -> 1.4 s; bunny 0.32 -> 0.55,
    2.1 -> 1.25 s; blocks 0.38 -> 0.42; Duck 0.62 -> 0.62; monkey 0.59 -> 0.58;
    20K pebble at 2048^2 0.57 -> 0.60, 3.7 -> 2.4 s.
  * ChartOptions.max_iterations = 0: one chart-growing pass, no re-seeding:
    1.5x less chart CPU than the default (1), coverage within +-0.03 (1 makes
    fewer, larger charts: 55 instead of 117 on the pebble).
  * PackOptions.resolution = texture size, texelsPerUnit estimated by xatlas:
    the atlas comes out 1.1-1.7x larger than asked (the estimate assumes 75%
    utilisation) and the UVs are normalised by the atlas' own size, so the
    gaps between charts are padding * texture / atlas texels (>= 2.4 for
    --padding 4). Re-packing at an exact texelsPerUnit to honour the padding
    takes 3-6 more packs and loses coverage (pebble 0.60 -> 0.55).
  * maxChartSize = texture size: a degenerate sliver chart (one orientation of
    "blocks") otherwise made a 44848x80 atlas, coverage 0.27.
  * padding = --padding texels (at least 1); bilinear = True leaves a 1-texel
    border so bilinear filtering never mixes charts; fix_winding = True keeps
    chart orientation consistent on meshes with flipped faces.
  * blockAlign = True: packs as fast as False, coverage equal or up to 10% more.
  * bruteForce = False: True covers 3-14% more texels but packing costs
    +0.15-0.2 s at 1024^2 and +2.5-6 s at 2048^2.
  * rotate_charts stays on: off packs 15-20% faster, coverage -9% .. +5%.

GIL: xatlas' Python binding holds it for the whole of ``generate`` (the main
thread stood still for the 2.7 s of a 16K unwrap run in a thread). When the
installed wheel is the tested xatlas 0.0.11, ``unwrap`` calls the same
library's exported C++ API (ComputeCharts, PackCharts) through ctypes instead,
which releases the GIL: ``unwrap`` run in a thread leaves the main thread free
(its longest stall was 12 ms) to drive the GPU. ``releases_gil()`` says which
path is active. The ctypes path is checked once per process against the binding
on a small mesh (identical UVs, else the binding is used);
KILN_XATLAS_CTYPES=0 turns it off.
"""

from __future__ import annotations

import os
import threading

import numpy as np

FACES_PER_PART = 1000
MAX_PARTS = 16


def _components(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Connected component (faces sharing a vertex) of each face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = faces.astype(np.int64, copy=False)
    rows = np.concatenate([f[:, 0], f[:, 1]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    g = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, label = connected_components(g, directed=False)
    return label[f[:, 0]]


def spatial_parts(vertices: np.ndarray, faces: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """Split faces into ``n_parts`` (a power of two) compact groups by recursive median cuts of their centroids.

    A connected piece of fewer than half a part's faces is placed by its own centroid and never cut."""
    c = vertices[faces].mean(1)
    if n_parts > 1:
        comp = _components(faces, len(vertices))
        size = np.bincount(comp)
        small = size[comp] < len(faces) / (2 * n_parts)
        if small.any():
            sums = np.zeros((len(size), 3))
            np.add.at(sums, comp[small], c[small])
            cc = sums / np.maximum(size, 1)[:, None]
            c = np.where(small[:, None], cc[comp], c)
            # key ties keep a small piece's faces together; the cut moves to the nearest piece boundary
            piece = np.where(small, comp, -1 - np.arange(len(faces)))
        else:
            piece = -1 - np.arange(len(faces))
    groups = [np.arange(len(faces))]
    while len(groups) < n_parts:
        nxt = []
        for g in groups:
            if len(g) < 2:
                nxt += [g, g[:0]]
                continue
            cc = c[g]
            ax = int(np.argmax(np.ptp(cc, 0)))
            order = np.argsort(cc[:, ax], kind="stable")
            half = _cut(piece[g][order], len(g) // 2)
            nxt += [g[order[:half]], g[order[half:]]]
        groups = nxt
    return groups


def _cut(piece_sorted: np.ndarray, half: int) -> int:
    """The split index nearest ``half`` that does not fall inside one piece (``half`` itself when none does)."""
    change = np.flatnonzero(piece_sorted[1:] != piece_sorted[:-1]) + 1
    if len(change) == 0:
        return half
    k = int(change[np.argmin(np.abs(change - half))])
    return k if 0 < k < len(piece_sorted) else half


def auto_parts(n_faces: int) -> int:
    """1 part below 4K faces (charts are then a small share of the time and splitting only shuffles the
    packing), then about one per 1K faces (a power of two), at most 16 (see the module docstring)."""
    if n_faces < 4 * FACES_PER_PART:
        return 1
    n = 4
    while n < MAX_PARTS and n_faces >= 2 * FACES_PER_PART * n:
        n *= 2
    return n


def _normalised(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """float32 vertices centred and scaled to a mean face area of 1 (xatlas' estimates and epsilons are absolute)."""
    v = np.asarray(vertices, np.float64)
    t = v[faces]
    area = float(np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum()) * 0.5
    centre = (v.min(0) + v.max(0)) / 2 if len(v) else np.zeros(3)
    scale = float(np.sqrt(len(faces) / area)) if area > 0 and np.isfinite(area) else 1.0
    return np.ascontiguousarray((v - centre) * scale, np.float32)


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int = 4, parts: int | None = None):
    """-> (vertices (n,3) f32 split at seams, faces (m,3) i32, uv (n,2) f32 in [0,1], vmap (n,) into input vertices)."""
    faces = np.asarray(faces)
    parts = auto_parts(len(faces)) if parts is None else max(1, int(parts))
    groups = spatial_parts(vertices, faces, parts) if parts > 1 else [np.arange(len(faces))]
    groups = [g for g in groups if len(g)]
    vn = _normalised(vertices, faces)
    meshes, locals_ = [], []
    for g in groups:
        used, inv = np.unique(faces[g], return_inverse=True)
        locals_.append(used)
        meshes.append((np.ascontiguousarray(vn[used]), np.ascontiguousarray(inv.reshape(-1, 3), np.uint32)))
    chart = {"max_iterations": 0, "fix_winding": True}
    pack = {"resolution": int(texture_size), "padding": int(max(1, padding)), "bilinear": True, "blockAlign": True, "bruteForce": False,
            "maxChartSize": int(texture_size)}
    out = _generate(meshes, chart, pack)
    V, F, UV, VM = [], [], [], []
    off = 0
    for used, (vmap, idx, uv) in zip(locals_, out):
        gm = used[np.asarray(vmap, np.int64)]
        V.append(vertices[gm])
        F.append(np.asarray(idx, np.int64) + off)
        UV.append(np.asarray(uv, np.float32))
        VM.append(gm)
        off += len(gm)
    # xatlas' v grows with the atlas row index already: that is Kiln's (glTF) convention.
    uv = np.clip(np.concatenate(UV), 0.0, 1.0)
    return (
        np.ascontiguousarray(np.concatenate(V), np.float32),
        np.ascontiguousarray(np.concatenate(F), np.int32),
        np.ascontiguousarray(uv),
        np.concatenate(VM),
    )


def _generate(meshes, chart: dict, pack: dict):
    """-> per mesh (vmap uint32, faces (m,3) uint32, uv (n,2) float32 normalised by the atlas' size)."""
    api = _capi()
    if api is not None:
        return api.generate(meshes, chart, pack)
    return _generate_binding(meshes, chart, pack)


def _generate_binding(meshes, chart: dict, pack: dict):
    import xatlas

    atlas = xatlas.Atlas()
    for v, f in meshes:
        atlas.add_mesh(v, f)
    co = xatlas.ChartOptions()
    co.max_iterations = chart["max_iterations"]
    co.fix_winding = chart["fix_winding"]
    po = xatlas.PackOptions()
    po.resolution = pack["resolution"]
    po.padding = pack["padding"]
    po.bilinear = pack["bilinear"]
    po.blockAlign = pack["blockAlign"]
    po.bruteForce = pack["bruteForce"]
    po.max_chart_size = pack["maxChartSize"]
    atlas.generate(co, po)
    return [atlas[i] for i in range(len(meshes))]


def releases_gil() -> bool:
    """Whether ``unwrap`` runs xatlas without holding the GIL (the ctypes path is active)."""
    return _capi() is not None


# --- xatlas' C++ API through ctypes (GIL released during the calls) ---------------------------------------
# The layouts are xatlas.h's as built into the xatlas 0.0.11 wheel (checked: sizeof ChartOptions 48,
# PackOptions 24, field offsets read back from the binding's own option objects; identical output).

_TESTED_VERSIONS = {"0.0.11"}
_capi_lock = threading.Lock()
_capi_state: dict = {}


def _capi():
    if "api" not in _capi_state:
        with _capi_lock:
            if "api" not in _capi_state:
                _capi_state["api"] = _load_capi()
    return _capi_state["api"]


def _load_capi():
    if os.environ.get("KILN_XATLAS_CTYPES", "1") == "0":
        return None
    try:
        import xatlas

        if getattr(xatlas, "__version__", None) not in _TESTED_VERSIONS:
            return None
        api = _CApi(xatlas.__file__)
        if not api.self_check():
            return None
        return api
    except Exception:
        return None


class _CApi:
    def __init__(self, path: str):
        import ctypes as C

        self.C = C

        class ChartOptions(C.Structure):
            _fields_ = [("paramFunc", C.c_void_p), ("maxChartArea", C.c_float), ("maxBoundaryLength", C.c_float),
                        ("normalDeviationWeight", C.c_float), ("roundnessWeight", C.c_float), ("straightnessWeight", C.c_float),
                        ("normalSeamWeight", C.c_float), ("textureSeamWeight", C.c_float), ("maxCost", C.c_float),
                        ("maxIterations", C.c_uint32), ("useInputMeshUvs", C.c_bool), ("fixWinding", C.c_bool)]

        class PackOptions(C.Structure):
            _fields_ = [("maxChartSize", C.c_uint32), ("padding", C.c_uint32), ("texelsPerUnit", C.c_float), ("resolution", C.c_uint32),
                        ("bilinear", C.c_bool), ("blockAlign", C.c_bool), ("bruteForce", C.c_bool), ("createImage", C.c_bool),
                        ("rotateChartsToAxis", C.c_bool), ("rotateCharts", C.c_bool)]

        class MeshDecl(C.Structure):
            _fields_ = [("vertexPositionData", C.c_void_p), ("vertexNormalData", C.c_void_p), ("vertexUvData", C.c_void_p),
                        ("indexData", C.c_void_p), ("faceIgnoreData", C.c_void_p), ("faceMaterialData", C.c_void_p),
                        ("faceVertexCount", C.c_void_p), ("vertexCount", C.c_uint32), ("vertexPositionStride", C.c_uint32),
                        ("vertexNormalStride", C.c_uint32), ("vertexUvStride", C.c_uint32), ("indexCount", C.c_uint32),
                        ("indexOffset", C.c_int32), ("faceCount", C.c_uint32), ("indexFormat", C.c_int32), ("epsilon", C.c_float)]

        class Mesh(C.Structure):
            _fields_ = [("chartArray", C.c_void_p), ("indexArray", C.c_void_p), ("vertexArray", C.c_void_p),
                        ("chartCount", C.c_uint32), ("indexCount", C.c_uint32), ("vertexCount", C.c_uint32)]

        class Atlas(C.Structure):
            _fields_ = [("image", C.c_void_p), ("meshes", C.POINTER(Mesh)), ("utilization", C.c_void_p), ("width", C.c_uint32),
                        ("height", C.c_uint32), ("atlasCount", C.c_uint32), ("chartCount", C.c_uint32), ("meshCount", C.c_uint32),
                        ("texelsPerUnit", C.c_float)]

        if C.sizeof(ChartOptions) != 48 or C.sizeof(PackOptions) != 24 or C.sizeof(MeshDecl) != 96:
            raise RuntimeError("unexpected xatlas struct sizes")
        self.ChartOptions, self.PackOptions, self.MeshDecl = ChartOptions, PackOptions, MeshDecl
        lib = C.CDLL(path)  # the binding's own, already loaded library: CDLL calls release the GIL
        AP = C.POINTER(Atlas)
        self.create = self._fn(lib, "_ZN6xatlas6CreateEv", AP, [])
        self.destroy = self._fn(lib, "_ZN6xatlas7DestroyEPNS_5AtlasE", None, [AP])
        self.add_mesh = self._fn(lib, "_ZN6xatlas7AddMeshEPNS_5AtlasERKNS_8MeshDeclEj", C.c_int, [AP, C.POINTER(MeshDecl), C.c_uint32])
        self.compute_charts = self._fn(lib, "_ZN6xatlas13ComputeChartsEPNS_5AtlasENS_12ChartOptionsE", None, [AP, ChartOptions])
        self.pack_charts = self._fn(lib, "_ZN6xatlas10PackChartsEPNS_5AtlasENS_11PackOptionsE", None, [AP, PackOptions])
        self._self_checked = False

    @staticmethod
    def _fn(lib, name, restype, argtypes):
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes
        return f

    def generate(self, meshes, chart: dict, pack: dict, timings: dict | None = None):
        import time

        C = self.C
        co = self.ChartOptions(None, 0.0, 0.0, 2.0, 0.01, 6.0, 4.0, 0.5, 2.0, 1, False, False)  # xatlas.h defaults
        co.maxIterations = int(chart["max_iterations"])
        co.fixWinding = bool(chart["fix_winding"])
        po = self.PackOptions(0, 0, 0.0, 0, True, False, False, False, True, True)
        po.resolution = int(pack["resolution"])
        po.padding = int(pack["padding"])
        po.bilinear = bool(pack["bilinear"])
        po.blockAlign = bool(pack["blockAlign"])
        po.bruteForce = bool(pack["bruteForce"])
        po.maxChartSize = int(pack["maxChartSize"])
        atlas = self.create()
        if not atlas:
            raise MemoryError("xatlas::Create failed")
        try:
            keep = []
            for i, (v, f) in enumerate(meshes):
                v = np.ascontiguousarray(v, np.float32)
                f = np.ascontiguousarray(f, np.uint32)
                keep += [v, f]  # xatlas copies them, but AddMesh works on while the next one is added
                d = self.MeshDecl()
                d.vertexPositionData = v.ctypes.data
                d.vertexCount = len(v)
                d.vertexPositionStride = 12
                d.indexData = f.ctypes.data
                d.indexCount = f.size
                d.indexFormat = 1  # UInt32
                d.epsilon = 1.192092896e-07
                err = self.add_mesh(atlas, C.byref(d), 0)
                if err:
                    raise RuntimeError(f"xatlas AddMesh failed for part {i} (error {err})")
            t0 = time.perf_counter()
            self.compute_charts(atlas, co)  # joins the AddMesh work first
            t1 = time.perf_counter()
            self.pack_charts(atlas, po)
            t2 = time.perf_counter()
            if timings is not None:
                timings.update(charts=t1 - t0, pack=t2 - t1)
            a = atlas.contents
            if a.meshCount != len(meshes):
                raise RuntimeError("xatlas returned a different number of meshes")
            wh = np.maximum(np.array([a.width, a.height], np.float32), 1)  # an empty atlas: UVs 0, not NaN
            vdt = np.dtype([("atlas", "<i4"), ("chart", "<i4"), ("uv", "<f4", (2,)), ("xref", "<u4")])
            out = []
            for i in range(len(meshes)):
                m = a.meshes[i]
                verts = np.frombuffer((C.c_char * (m.vertexCount * 20)).from_address(m.vertexArray), vdt) if m.vertexCount else np.zeros(0, vdt)
                idx = np.frombuffer((C.c_char * (m.indexCount * 4)).from_address(m.indexArray), np.uint32) if m.indexCount else np.zeros(0, np.uint32)
                out.append((verts["xref"].copy(), idx.reshape(-1, 3).copy(), (verts["uv"] / wh).astype(np.float32)))
            return out
        finally:
            self.destroy(atlas)

    def self_check(self) -> bool:
        """Identical UVs from the binding and from this path on a small mesh (a lumpy sphere of 320 faces)."""
        from engine.samples import _icosphere

        v, f = _icosphere(2)
        v = (v * (1.0 + 0.2 * np.sin(5 * v[:, :1]))).astype(np.float32)
        meshes = [(v, f.astype(np.uint32)), (v[:, ::-1].copy() + 3, f.astype(np.uint32))]
        chart = {"max_iterations": 0, "fix_winding": True}
        pack = {"resolution": 256, "padding": 2, "bilinear": True, "blockAlign": True, "bruteForce": False, "maxChartSize": 256}
        a = _generate_binding(meshes, chart, pack)
        b = self.generate(meshes, chart, pack)
        return all(np.array_equal(np.asarray(x), y) for ma, mb in zip(a, b) for x, y in zip(ma, mb))
