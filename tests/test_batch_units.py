"""kiln batch, the parts without workers: folder discovery, manifests, resume rules, summary files, executors registry."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from engine.batch import inputs as I
from engine.batch import resume
from engine.batch.summary import AssetResult, AssetStatus, write_summary
from engine.options import BakeOptions

BASE = BakeOptions(faces=100, texture_size=64, device="cpu").to_dict()


def touch(p: Path, data: bytes = b"x", mtime: float | None = None) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if mtime is not None:
        os.utime(p, (mtime, mtime))
    return p


def test_folder_discovery_recursive_targets_sidecars_and_exclusions(tmp_path):
    root = tmp_path / "in"
    touch(root / "chair.glb")
    touch(root / "chair_low.glb")  # chair's own low-poly
    touch(root / "lonely_low.obj", b"v 0 0 0\n")  # no 'lonely' beside it: an asset of its own
    touch(root / "props" / "lamp.obj", b"mtllib lamp.mtl\nv 0 0 0\n")
    touch(root / "props" / "lamp.mtl", b"newmtl a\nmap_Kd -s 1 1 1 tex/lamp diffuse.png\n")
    touch(root / "props" / "tex" / "lamp diffuse.png")
    touch(root / "props" / "scene.gltf", json.dumps({"buffers": [{"uri": "scene%20data.bin"}], "images": [{"uri": "data:image/png;base64,AAAA"}]}).encode())
    touch(root / "props" / "scene data.bin")
    touch(root / "notes.txt")
    touch(root / ".hidden" / "secret.glb")
    touch(root / "out" / "old_result.glb")  # the output folder inside the input is not an input
    assets = I.discover_folder(root, BASE, "_low", exclude=(root / "out",))
    by = {a.name: a for a in assets}
    assert sorted(by) == ["chair", "lonely_low", "props/lamp", "props/scene"]
    assert by["chair"].target == (root / "chair_low.glb").resolve()
    assert by["props/lamp"].target is None
    lamp_files = {p.name for p in by["props/lamp"].files()}
    assert lamp_files == {"lamp.obj", "lamp.mtl", "lamp diffuse.png"}
    assert {p.name for p in by["props/scene"].files()} == {"scene.gltf", "scene data.bin"}
    assert all(a.error is None and a.options["faces"] == 100 for a in assets)
    assert by["props/lamp"].output_path(tmp_path / "o") == tmp_path / "o" / "props" / "lamp.glb"
    # the suffix can be turned off: chair_low is then an asset of its own
    assert sorted(a.name for a in I.discover_folder(root, BASE, "", exclude=(root / "out",))) == [
        "chair", "chair_low", "lonely_low", "props/lamp", "props/scene"]


def test_folder_name_clash_fails_the_second_asset_only(tmp_path):
    touch(tmp_path / "rock.glb")
    touch(tmp_path / "rock.obj", b"v 0 0 0\n")
    assets = I.discover_folder(tmp_path, BASE)
    errs = [a.error for a in assets]
    assert errs[0] is None and errs[1]["code"] == "duplicate_output"
    assert "rock.glb" in errs[1]["message"]


def test_csv_manifest_options_targets_names_and_bad_rows(tmp_path):
    touch(tmp_path / "m" / "a.glb")
    touch(tmp_path / "m" / "b.glb")
    touch(tmp_path / "m" / "b_retopo.glb")
    man = tmp_path / "m" / "list.csv"
    man.write_text(
        "source,output,target,faces,texture_size,evaluate,options\n"
        "a.glb,,,50,,,\n"
        "b.glb,hero/b_final.glb,b_retopo.glb,,128,yes,\"{\"\"padding\"\": 8}\"\n"
        "a.glb,bad,,many,,,\n"
        "a.glb,worse,,,100000,,\n"
        "\n"
        "missing.glb,,,,,,\n"
    )
    assets = I.read_manifest(man, BASE)
    assert [a.name for a in assets] == ["a", "hero/b_final", "bad", "worse", "missing"]
    a, b, bad, worse, missing = assets
    assert a.options["faces"] == 50 and a.options["texture_size"] == 64 and a.error is None
    assert b.target == (tmp_path / "m" / "b_retopo.glb").resolve()
    assert b.options["texture_size"] == 128 and b.options["evaluate"] is True and b.options["padding"] == 8
    assert bad.error["code"] == "bad_option" and "line 4" in bad.error["message"] and "faces" in bad.error["message"]
    assert worse.error["code"] == "bad_option" and "texture_size" in worse.error["message"]
    assert missing.error is None and missing.source == (tmp_path / "m" / "missing.glb").resolve()  # fails in the bake, with its message


def test_jsonl_manifest_and_manifest_errors(tmp_path):
    touch(tmp_path / "a.glb")
    man = tmp_path / "list.jsonl"
    man.write_text('{"source": "a.glb", "options": {"faces": 40}}\n# a comment\n\n{"source": "a.glb", "output": "a2", "options": {"nope": 1}}\n')
    a, a2 = I.read_manifest(man, BASE)
    assert a.options["faces"] == 40 and a.error is None
    assert a2.error["code"] == "bad_option" and "nope" in a2.error["message"]
    arr = tmp_path / "list.json"
    arr.write_text(json.dumps([{"source": "a.glb"}]))
    assert [x.name for x in I.read_manifest(arr, BASE)] == ["a"]
    for text, word in (
        ("source,colour\na.glb,red\n", "colour"),
        ("file\na.glb\n", "source"),
    ):
        (tmp_path / "x.csv").write_text(text)
        with pytest.raises(I.ManifestError, match=word):
            I.read_manifest(tmp_path / "x.csv", BASE)
    (tmp_path / "x.jsonl").write_text('{"source": "a.glb", "faces": 3}\n')
    with pytest.raises(I.ManifestError, match="unknown key"):
        I.read_manifest(tmp_path / "x.jsonl", BASE)
    (tmp_path / "y.jsonl").write_text('{"source": "a.glb"\n')
    with pytest.raises(I.ManifestError, match="line 1"):
        I.read_manifest(tmp_path / "y.jsonl", BASE)
    (tmp_path / "z.csv").write_text("source,output\na.glb,../escape\n")
    assert I.read_manifest(tmp_path / "z.csv", BASE)[0].error["code"] == "bad_output"
    with pytest.raises(I.ManifestError, match="not found"):
        I.collect(tmp_path / "nothing", BASE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(I.ManifestError, match="no models"):
        I.collect(tmp_path / "empty", BASE)
    with pytest.raises(I.ManifestError, match="neither"):
        I.collect(tmp_path / "a.glb", BASE)


def test_resume_rules(tmp_path):
    now = time.time()
    src = touch(tmp_path / "in" / "a.obj", b"mtllib a.mtl\n", mtime=now - 100)
    touch(tmp_path / "in" / "a.mtl", b"map_Kd a.png\n", mtime=now - 100)
    png = touch(tmp_path / "in" / "a.png", mtime=now - 100)
    out = tmp_path / "out"
    asset = I.Asset(name="a", source=src, options=dict(BASE))
    assert not resume.up_to_date(out, asset)  # no output
    touch(asset.output_path(out), mtime=now - 50)
    assert not resume.up_to_date(out, asset)  # no stamp: made by something else
    resume.write_stamp(out, asset)
    assert resume.up_to_date(out, asset)
    os.utime(png, (now, now))  # a texture changed after the output
    assert not resume.up_to_date(out, asset)
    os.utime(png, (now - 100, now - 100))
    assert resume.up_to_date(out, asset)
    changed = I.Asset(name="a", source=src, options={**BASE, "faces": 200})
    assert not resume.up_to_date(out, changed)  # other options: the output is older than its options
    resume.clear_stamp(out, asset)
    assert not resume.up_to_date(out, asset)


def test_summary_json_and_csv(tmp_path):
    results = [
        AssetResult(name="a", source="/x/a.glb", output=str(tmp_path / "a.glb"), status=AssetStatus.SUCCEEDED, seconds=2.0,
                    faces_in=1000, faces_out=100, backend="cpu", node="host1", attempts=1),
        AssetResult(name="b", source="/x/b.glb", output=str(tmp_path / "b.glb"), status=AssetStatus.FAILED, seconds=0.1,
                    error={"code": "bad_input", "message": "corrupt GLB 'b.glb', truly", "hint": None}, node="host2", attempts=1),
        AssetResult(name="c", source="/x/c.glb", output=str(tmp_path / "c.glb"), status=AssetStatus.SKIPPED),
    ]
    doc = write_summary(tmp_path, "local", results, time.time(), 30.0, {"workers": 2})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(doc, default=str))
    assert on_disk["executor"] == "local" and on_disk["workers"] == 2
    t = on_disk["totals"]
    assert (t["assets"], t["succeeded"], t["failed"], t["skipped"]) == (3, 1, 1, 1)
    assert t["assets_per_minute"] == 2.0 and t["faces_in"] == 1000 and t["faces_out"] == 100
    assert t["nodes"] == ["host1", "host2"]
    assert [a["status"] for a in on_disk["assets"]] == ["succeeded", "failed", "skipped"]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["succeeded", "failed", "skipped"]
    assert rows[1]["error_code"] == "bad_input" and rows[1]["error_message"] == "corrupt GLB 'b.glb', truly"
    assert rows[0]["faces_out"] == "100" and rows[2]["seconds"] == ""


def test_executor_registry():
    from engine.service import executors

    assert executors.names() == ["local", "ray"]
    with pytest.raises(executors.ExecutorUnavailable, match="unknown executor"):
        executors.load("slurm")
    assert hasattr(executors.load("local"), "make_slots")
