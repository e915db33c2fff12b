"""`inflate` reconstruction: synthetic silhouettes with known shape, the shared
human_object photo, frame conventions, bad inputs (library and CLI)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.reconstruct import get_backend
from engine.reconstruct import image as imgmod
from engine.reconstruct.checks import IOU_MIN, PSNR_MIN, closedness, front_view_checks, iou

N = 160  # synthetic image side: small keeps the tests fast


def _photo(n: int = N) -> np.ndarray:
    """A photo whose colours vary everywhere (gradients + stripes), so a
    mirrored or shifted texture would show in the PSNR."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    r = 40 + 180 * xx / n
    g = 40 + 180 * yy / n
    b = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.clip(np.stack([r, g, b], 2), 0, 255).astype(np.uint8)


def _shapes(n: int = N) -> dict:
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(xx - n / 2 + 0.5, yy - n / 2 + 0.5)
    return {
        "disc": r < n * 0.35,
        "square": (np.abs(xx - n / 2) < n * 0.3) & (np.abs(yy - n / 2) < n * 0.3),
        "L": ((xx > n * 0.2) & (xx < n * 0.4) & (yy > n * 0.15) & (yy < n * 0.85))
        | ((xx > n * 0.2) & (xx < n * 0.8) & (yy > n * 0.65) & (yy < n * 0.85)),
        "ring": (r < n * 0.4) & (r > n * 0.2),
    }


SHAPES = _shapes()
GENUS = {"disc": 0, "square": 0, "L": 0, "ring": 1}


@pytest.mark.parametrize("name", list(SHAPES))
def test_inflate_synthetic_shapes(name):
    mask = SHAPES[name]
    res = get_backend("inflate").reconstruct(_photo(), mask, {})
    m = res.mesh
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32 and m.uv.dtype == np.float32
    assert m.materials[0].texture.dtype == np.uint8 and m.materials[0].texture.shape[2] == 3
    c = front_view_checks(m, res.front_view)
    assert c["iou"] >= IOU_MIN, c
    assert c["iou_input_mask"] >= IOU_MIN, c
    assert c["psnr"] >= PSNR_MIN, c
    assert c["watertight"] and c["winding_consistent"] and c["outward_normals"], c
    assert c["bodies"] == 1
    # closed orientable surface: Euler characteristic 2 - 2 * genus (the ring is a solid torus)
    assert c["euler_number"] == 2 - 2 * GENUS[name]
    assert c["passed"]


def test_inflate_frame_upright_front_plus_z_not_mirrored():
    """+Y up, unit height, bottom at 0, image right = +X, the textured front faces +Z."""
    mask = SHAPES["L"]  # the foot of the L sticks out to the right at the bottom
    photo = np.zeros((N, N, 3), np.uint8)
    photo[:, : N // 2] = (255, 0, 0)  # left half red
    photo[:, N // 2 :] = (0, 0, 255)  # right half blue
    res = get_backend("inflate").reconstruct(photo, mask, {"back": "mirror"})  # the mirrored back is checked below
    v = res.mesh.vertices
    assert v[:, 1].min() == pytest.approx(0.0, abs=0.02)
    assert v[:, 1].max() == pytest.approx(1.0, abs=0.02)
    assert abs(v[:, 2].max() + v[:, 2].min()) < 1e-5  # front and back symmetric about z = 0
    foot = v[:, 0] > 0.25
    assert foot.any() and v[foot, 1].max() < 0.4  # the foot is low and on the +X side
    # a ray from +Z onto the foot sees a front face (normal +Z) coloured blue (image right)
    import trimesh

    tm = trimesh.Trimesh(v, res.mesh.faces, process=False)
    x = float(v[foot, 0].mean())
    y = 0.5 * float(v[foot, 1].min() + v[foot, 1].max())
    tri, _, loc = tm.ray.intersects_id([[x, y, 5.0]], [[0, 0, -1.0]], multiple_hits=False, return_locations=True)
    assert len(tri) == 1 and tm.face_normals[tri[0]][2] > 0.5
    from engine.mesh.source import shade

    bary = trimesh.triangles.points_to_barycentric(tm.triangles[tri], loc)
    col = shade(res.mesh, tri, bary)[0]
    assert col[2] > 0.8 and col[0] < 0.2
    # seen from behind, the mirrored front shows the same blue at the same place
    tri, _, loc = tm.ray.intersects_id([[x, y, -5.0]], [[0, 0, 1.0]], multiple_hits=False, return_locations=True)
    assert tm.face_normals[tri[0]][2] < -0.5
    col = shade(res.mesh, tri, trimesh.triangles.points_to_barycentric(tm.triangles[tri], loc))[0]
    assert col[2] > 0.8


def _back_and_front_colours(res, n=7):
    """Colours seen from +Z (front) and -Z (back) on an n x n grid of rays over the object."""
    import trimesh

    from engine.mesh.source import shade

    v = res.mesh.vertices
    tm = trimesh.Trimesh(v, res.mesh.faces, process=False)
    xs = np.linspace(v[:, 0].min(), v[:, 0].max(), n + 2)[1:-1]
    ys = np.linspace(v[:, 1].min(), v[:, 1].max(), n + 2)[1:-1]
    out = {}
    for side, z in (("front", 5.0), ("back", -5.0)):
        origins = np.array([[x, y, z] for x in xs for y in ys])
        dirs = np.tile([0.0, 0.0, -np.sign(z)], (len(origins), 1))
        tri, ray, loc = tm.ray.intersects_id(origins, dirs, multiple_hits=False, return_locations=True)
        order = np.argsort(ray)
        tri, ray, loc = tri[order], ray[order], loc[order]
        out[side] = (ray, shade(res.mesh, tri, trimesh.triangles.points_to_barycentric(tm.triangles[tri], loc)))
    common = np.intersect1d(out["front"][0], out["back"][0])
    f = out["front"][1][np.isin(out["front"][0], common)]
    b = out["back"][1][np.isin(out["back"][0], common)]
    return f, b


def test_inflate_default_back_hides_the_front():
    """The default back is the front's colours blurred past recognition and darkened:
    no mirrored face on the back of a head, but the object's own colours."""
    res = get_backend("inflate").reconstruct(_photo(), SHAPES["disc"], {})
    assert res.info["back"] == "shaded"
    front, back = _back_and_front_colours(res)
    assert len(front) >= 20
    def detail(c):  # mean colour change between neighbouring samples
        return float(np.abs(np.diff(c, axis=0)).mean())

    assert detail(back) < 0.5 * detail(front), (detail(back), detail(front))  # the stripes and gradients are gone
    assert back.mean() < 0.8 * front.mean()  # darker than the lit front
    assert np.abs(back.mean(axis=0) / back.mean() - front.mean(axis=0) / front.mean()).max() < 0.25  # the same hue overall
    assert front_view_checks(res.mesh, res.front_view)["passed"]  # the front is still the photo
    mirror = get_backend("inflate").reconstruct(_photo(), SHAPES["disc"], {"back": "mirror"})
    f2, b2 = _back_and_front_colours(mirror)
    assert detail(b2) > 0.5 * detail(f2)  # the option that mirrors the front is still there
    avg = get_backend("inflate").reconstruct(_photo(), SHAPES["disc"], {"back": "average"})
    _, b3 = _back_and_front_colours(avg)
    assert np.ptp(b3, axis=0).max() < 1e-3 and avg.info["back"].startswith("#")  # one solid colour


def test_mask_parts_are_reported(tmp_path, kiln_env):
    """Only the largest of several mask parts is rebuilt: the report, the CLI and the add-on say so."""
    yy, xx = np.mgrid[0:N, 0:N]
    blobs = [(40, 50, 28), (115, 50, 16), (80, 125, 12)]
    mask = np.zeros((N, N), bool)
    for cx, cy, r in blobs:
        mask |= np.hypot(xx - cx, yy - cy) < r
    img, msk = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(_photo()).save(img)
    Image.fromarray(mask.astype(np.uint8) * 255).save(msk)
    out = tmp_path / "parts.glb"
    r = _kiln(["reconstruct", str(img), "--mask", str(msk), "-o", str(out), "--device", "cpu", "--faces", "2000", "--texture-size", "128", "--json"], kiln_env)
    assert r.returncode == 0, r.stderr
    mp = json.loads(r.stdout)["mask_parts"]
    areas = sorted((np.pi * rr * rr for _, _, rr in blobs), reverse=True)
    assert mp["found"] == 3 and mp["kept"] == 1
    assert mp["kept_fraction"] == pytest.approx(areas[0] / sum(areas), abs=0.03)
    assert "kept the largest of 3 parts" in r.stderr and "--keep-all-components" in r.stderr
    r = _kiln(["reconstruct", str(img), "--mask", str(msk), "-o", str(out), "--device", "cpu", "--faces", "2000", "--texture-size", "128",
               "--json", "--keep-all-components"], kiln_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mask_parts"] == {"found": 3, "kept": 3, "kept_fraction": 1.0}
    assert "kept the largest" not in r.stderr


def test_inflate_back_colour():
    res = get_backend("inflate").reconstruct(_photo(), SHAPES["disc"], {"back": "#00ff00"})
    import trimesh

    tm = trimesh.Trimesh(res.mesh.vertices, res.mesh.faces, process=False)
    from engine.mesh.source import shade

    tri, _, loc = tm.ray.intersects_id([[0.0, 0.5, -5.0]], [[0, 0, 1.0]], multiple_hits=False, return_locations=True)
    col = shade(res.mesh, tri, trimesh.triangles.points_to_barycentric(tm.triangles[tri], loc))[0]
    assert np.allclose(col, [0, 1, 0], atol=1e-3)
    assert front_view_checks(res.mesh, res.front_view)["passed"]  # the front is still the photo


def test_inflate_thickness_rounded_and_capped():
    """Disc without cap -> close to a sphere; the default cap flattens it to depth * size."""
    mask = SHAPES["disc"]
    sphere = get_backend("inflate").reconstruct(_photo(), mask, {"depth": 2.0})
    d = sphere.mesh.vertices
    width = d[:, 0].max() - d[:, 0].min()
    assert (d[:, 2].max() - d[:, 2].min()) == pytest.approx(width, rel=0.08)
    slab = get_backend("inflate").reconstruct(_photo(), mask, {"depth": 0.3})
    s = slab.mesh.vertices
    assert (s[:, 2].max() - s[:, 2].min()) == pytest.approx(0.3 * width, rel=0.1)


def test_inflate_large_image_is_downscaled_and_budgeted():
    n = 2000
    yy, xx = np.mgrid[0:n, 0:n]
    mask = np.hypot(xx - 1000, yy - 1000) < 900
    photo = np.zeros((n, n, 3), np.uint8) + 90
    res = get_backend("inflate").reconstruct(photo, mask, {"max_size": 512, "mesh_faces": 20000})
    info = res.info
    assert max(info["working_size"]) == 512
    assert info["grid_step_px"] > 1
    assert 8000 < info["faces"] < 30000
    assert closedness(res.mesh.vertices, res.mesh.faces)["watertight"]
    assert front_view_checks(res.mesh, res.front_view, closed=False)["iou"] >= IOU_MIN


def test_human_object_all_components(images_dir):
    d = images_dir / "human_object"
    rgb, alpha = imgmod.load_image(d / "image.png")
    fg = imgmod.foreground(rgb, alpha, d / "0.png")
    assert fg.source == "mask"
    res = get_backend("inflate").reconstruct(rgb, fg.mask, {"keep_all_components": True, "max_size": 800})
    c = front_view_checks(res.mesh, res.front_view)
    assert c["passed"], c
    assert c["iou_input_mask"] >= IOU_MIN  # all parts kept: matches the mask as given
    assert c["iou"] >= IOU_MIN and c["psnr"] >= PSNR_MIN and c["watertight"]


def test_human_object_main_component(images_dir):
    d = images_dir / "human_object"
    rgb, alpha = imgmod.load_image(d / "image.png")
    fg = imgmod.foreground(rgb, alpha, d / "0.png")
    res = get_backend("inflate").reconstruct(rgb, fg.mask, {"max_size": 800})
    assert res.info["silhouette"]["components_kept"] == 1
    assert res.info["silhouette"]["components_found"] > 1
    c = front_view_checks(res.mesh, res.front_view)
    assert c["passed"], c
    # only the largest part is rebuilt, so against the full mask the IoU is lower -- reported, not hidden
    assert c["iou_input_mask"] < c["iou"]


# ----------------------------------------------------------------------------- foreground


def test_foreground_from_alpha_and_grabcut():
    n = 200
    yy, xx = np.mgrid[0:n, 0:n]
    disc = np.hypot(xx - 100, yy - 110) < 55
    rng = np.random.default_rng(0)
    bg = np.stack([40 + 20 * np.sin(xx / 7), 120 + 30 * np.cos(yy / 9), 160 + 0 * xx], 2) + rng.normal(0, 8, (n, n, 3))
    fgc = np.stack([200 + 0 * xx, 60 + 20 * np.sin(yy / 5), 50 + 0 * xx], 2)
    img = np.clip(np.where(disc[..., None], fgc, bg), 0, 255).astype(np.uint8)
    fg = imgmod.foreground(img, None, None)
    assert fg.source == "grabcut" and iou(fg.mask, disc) > 0.95
    alpha = np.where(disc, 255, 0).astype(np.uint8)
    fg = imgmod.foreground(img, alpha, None)
    assert fg.source == "alpha" and iou(fg.mask, disc) == 1.0
    with pytest.raises(InputError) as e:
        imgmod.foreground(img, None, None, auto=False)
    assert e.value.code == "no_foreground"


def test_mask_file_any_nonzero(tmp_path):
    m = np.zeros((40, 50), np.uint8)
    m[10:30, 5:20] = 1  # a 0/1 mask (looks black) still counts
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    got = imgmod.load_mask(p, (40, 50))
    assert got.sum() == 20 * 15
    rgbm = np.zeros((40, 50, 3), np.uint8)
    rgbm[0:5, 0:5, 2] = 7
    Image.fromarray(rgbm).save(p)
    assert imgmod.load_mask(p, (40, 50)).sum() == 25


# ----------------------------------------------------------------------------- bad inputs (library)


def _err(fn, *a, **k) -> InputError:
    with pytest.raises(InputError) as e:
        fn(*a, **k)
    assert e.value.exit_code == 2 and e.value.message
    return e.value


def test_bad_inputs_library(tmp_path):
    inflate = get_backend("inflate")
    photo = _photo()
    assert _err(imgmod.foreground, photo, None, np.zeros((N, N), bool)).code == "empty_mask"
    tiny = np.zeros((N, N), bool)
    tiny[5:8, 5:8] = True
    assert _err(imgmod.foreground, photo, None, tiny).code == "mask_too_small"
    assert _err(imgmod.foreground, photo, None, np.ones((N, N), bool)).code == "no_foreground"
    assert _err(imgmod.foreground, photo, None, np.ones((N, N + 1), bool)).code == "mask_size_mismatch"
    p = tmp_path / "notes.png"
    p.write_text("this is not an image")
    assert _err(imgmod.load_image, p).code == "unsupported_format"
    assert _err(imgmod.load_image, tmp_path / "missing.png").code == "missing_file"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _err(imgmod.load_image, tmp_path / "empty.png").code == "empty_file"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.png")
    assert _err(imgmod.load_image, tmp_path / "small.png").code == "image_too_small"
    Image.fromarray(np.zeros((N + 3, N, 3), np.uint8) + 255).save(tmp_path / "m.png")
    assert _err(imgmod.load_mask, tmp_path / "m.png", (N, N)).code == "mask_size_mismatch"
    assert _err(inflate.reconstruct, photo, SHAPES["disc"], {"nonsense": 1}).code == "bad_option"
    assert _err(inflate.reconstruct, photo, SHAPES["disc"], {"back": "#12"}).code == "bad_option"
    assert _err(inflate.reconstruct, photo, SHAPES["disc"], {"depth": -1}).code == "bad_option"
    assert _err(get_backend, "nope").code == "bad_option"


def test_inflate_one_pixel_lines_still_closed():
    """A 1-pixel cross survives cleaning (opening would erase it) and still gives a closed solid."""
    line = np.zeros((N, N), bool)
    line[80, 10:150] = True
    line[10:150, 80] = True
    res = get_backend("inflate").reconstruct(_photo(), line, {})
    c = front_view_checks(res.mesh, res.front_view)
    assert c["watertight"] and c["outward_normals"] and c["iou"] >= IOU_MIN, c
    assert c["psnr"] <= 100.0


# ----------------------------------------------------------------------------- library pipeline + CLI


def _write_inputs(tmp_path, name="disc"):
    img = tmp_path / "photo.png"
    msk = tmp_path / "mask.png"
    Image.fromarray(_photo()).save(img)
    Image.fromarray(SHAPES[name].astype(np.uint8) * 255).save(msk)
    return img, msk


def test_reconstruct_pipeline_end_to_end(tmp_path):
    from engine.options import BakeOptions
    from engine.reconstruct.pipeline import reconstruct

    img, msk = _write_inputs(tmp_path, "ring")
    out = tmp_path / "ring.glb"
    events = []
    # simplify_aggression 5 keeps fast-simplification from creating non-manifold edges (see docs/reconstruct.md)
    opts = BakeOptions(faces=4000, texture_size=512, device="cpu", simplify_aggression=5)
    res = reconstruct(img, out, opts, {"mask": msk.read_bytes()}, progress=lambda s, f, m: events.append((s, f)))
    assert out.is_file() and out.read_bytes()[:4] == b"glTF"
    rep = res.report
    json.dumps(rep)  # JSON-able
    rec = rep["reconstruct"]
    assert rec["backend"] == "inflate" and rec["foreground"]["source"] == "mask"
    for k in ("source", "baked"):
        c = rec["checks"][k]
        assert c["iou"] >= IOU_MIN and c["psnr"] >= PSNR_MIN, (k, c)
    assert rec["checks"]["source"]["watertight"]
    assert rec["checks"]["baked"]["watertight"] and rec["checks"]["baked"]["euler_number"] == 0
    assert rec["checks_passed"]
    assert rep["faces_out"] <= 4200
    stages = [s for s, _ in events]
    for s in ("image", "reconstruct", "simplify", "unwrap", "bake", "check", "done"):
        assert s in stages, stages
    fr = [f for _, f in events]
    assert all(b >= a - 1e-9 for a, b in zip(fr, fr[1:])), "progress must not go backwards"
    assert fr[-1] == 1.0


def test_reconstruct_pipeline_cancel(tmp_path):
    from engine.errors import CancelledError
    from engine.options import BakeOptions
    from engine.reconstruct.pipeline import reconstruct

    img, msk = _write_inputs(tmp_path)
    seen = []

    def cancel():
        return "reconstruct" in seen

    with pytest.raises(CancelledError):
        reconstruct(img, tmp_path / "x.glb", BakeOptions(device="cpu"), {"mask": str(msk)}, progress=lambda s, f, m: seen.append(s), cancel=cancel)
    assert not (tmp_path / "x.glb").exists()


def test_reconstruct_options_errors(tmp_path):
    from engine.reconstruct.pipeline import reconstruct

    img, msk = _write_inputs(tmp_path)
    assert _err(reconstruct, img, None, None, {"bogus": 1}).code == "bad_option"
    assert _err(reconstruct, img, None, None, {"backend": "magic"}).code == "bad_option"


def _kiln(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_cli_reconstruct_ok(tmp_path, kiln_env):
    img, msk = _write_inputs(tmp_path, "L")
    out = tmp_path / "l.glb"
    r = _kiln(["reconstruct", str(img), "--mask", str(msk), "-o", str(out), "--device", "cpu", "--faces", "3000", "--texture-size", "256", "--json"], kiln_env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["reconstruct"]["checks"]["source"]["passed"]
    assert rep["reconstruct"]["checks"]["baked"]["iou"] >= IOU_MIN
    assert out.is_file()
    assert "reconstruct: backend inflate" in r.stderr


def test_cli_reconstruct_bad_inputs_exit_2(tmp_path, kiln_env):
    img, msk = _write_inputs(tmp_path)
    empty = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros((N, N), np.uint8)).save(empty)
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.zeros((N + 10, N), np.uint8) + 255).save(small)
    notimg = tmp_path / "x.png"
    notimg.write_text("hello")
    cases = [
        ([str(img), "--mask", str(empty)], "no pixel"),
        ([str(img), "--mask", str(small)], "image is"),
        ([str(notimg)], "not an image"),
        ([str(tmp_path / "nope.png")], "not found"),
        ([str(img), "--mask", str(msk), "--back", "#zz"], "back colour"),
        ([str(img), "--mask", str(msk), "--faces", "1"], "faces"),
    ]
    for args, needle in cases:
        r = _kiln(["reconstruct", *args, "-o", str(tmp_path / "o.glb"), "--device", "cpu"], kiln_env)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        err = r.stderr.strip().splitlines()
        assert err and err[-1].startswith("kiln: error:") and needle in err[-1], (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_cli_sam3d_not_configured_exit_3(tmp_path, kiln_env):
    img, msk = _write_inputs(tmp_path)
    env = {k: v for k, v in kiln_env.items() if k not in ("KILN_SAM3D_CONFIG", "KILN_SAM3D_REPO")}
    r = _kiln(["reconstruct", str(img), "--mask", str(msk), "--backend", "sam3d", "-o", str(tmp_path / "o.glb")], env)
    assert r.returncode == 3, r.stderr
    assert "sam3d" in r.stderr and "KILN_SAM3D_CONFIG" in r.stderr


def test_mask_bytes_and_array_equivalent(tmp_path):
    img, msk = _write_inputs(tmp_path)
    from engine.reconstruct.pipeline import load_inputs

    rgb, a, _ = load_inputs(img, str(msk))
    _, b, _ = load_inputs(io.BytesIO(img.read_bytes()).getvalue(), msk.read_bytes())
    _, c, _ = load_inputs(img, SHAPES["disc"])
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)


def test_human_object_pipeline_checks_after_bake(images_dir, tmp_path):
    """image.png + 0.png through the whole pipeline; checks on the reconstruction and on the reloaded GLB."""
    from engine.options import BakeOptions
    from engine.reconstruct.pipeline import reconstruct

    d = images_dir / "human_object"
    out = tmp_path / "bench.glb"
    opts = BakeOptions(faces=8000, texture_size=512, device="cpu", simplify_aggression=5)
    res = reconstruct(d / "image.png", out, opts, {"mask": str(d / "0.png"), "keep_all_components": True, "max_size": 800})
    rec = res.report["reconstruct"]
    for k in ("source", "baked"):
        c = rec["checks"][k]
        assert c["iou"] >= IOU_MIN and c["iou_input_mask"] >= IOU_MIN and c["psnr"] >= PSNR_MIN, (k, c)
        assert c["watertight"] and c["outward_normals"], (k, c)
    assert rec["checks_passed"]
    assert rec["image_size"] == [1600, 898]
