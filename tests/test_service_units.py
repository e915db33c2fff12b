"""Unit tests of the engine service's pieces that need no running server."""

from __future__ import annotations

import json
import signal
import struct
import time
from pathlib import Path

import pytest

from engine.service.app import parse_job_options
from engine.service.cli import is_loopback
from engine.service.config import ServiceConfig
from engine.service.errors import ApiError
from engine.service.gpus import GpuInfo, detect_gpus, parse_nvidia_smi_list
from engine.service.sniff import sniff_upload
from engine.service.supervisor import Job, Supervisor, describe_exit
from engine.service.upload import display_name, download_stem

SMI = """GPU 0: NVIDIA H200 (UUID: GPU-aaaa-1111)
GPU 1: NVIDIA H200 (UUID: GPU-bbbb-2222)
  MIG 1g.18gb     Device  0: (UUID: MIG-cccc)
GPU 2: NVIDIA GeForce RTX 4090 (UUID: GPU-dddd-3333)
"""


def test_nvidia_smi_parsing_and_visible_devices():
    gpus = parse_nvidia_smi_list(SMI)
    assert [(g.visible_id, g.name, g.uuid) for g in gpus] == [
        ("0", "NVIDIA H200", "GPU-aaaa-1111"),
        ("1", "NVIDIA H200", "GPU-bbbb-2222"),
        ("2", "NVIDIA GeForce RTX 4090", "GPU-dddd-3333"),
    ]
    assert [g.visible_id for g in detect_gpus({}, gpus)] == ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-dddd-3333"]
    assert [g.name for g in detect_gpus({}, gpus)] == [g.name for g in gpus]
    assert detect_gpus({}, None) == []  # no nvidia-smi, no variable: CPU workers
    assert [g.name for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "2,0"}, gpus)] == ["NVIDIA GeForce RTX 4090", "NVIDIA H200"]
    assert [g.visible_id for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "GPU-bbbb-2222"}, gpus)] == ["GPU-bbbb-2222"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}, gpus) == []
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, gpus) == []
    assert [g.visible_id for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "1,7,0"}, gpus)] == ["1"]  # CUDA stops at an invalid id
    assert [g.visible_id for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "3,4"}, None)] == ["3", "4"]


def test_describe_exit_names_signal_stage_and_hint():
    e = describe_exit(-signal.SIGSEGV, "bake")
    assert e["code"] == "worker_crashed" and e["signal"] == "SIGSEGV" and e["stage"] == "bake"
    assert "SIGSEGV" in e["message"] and "'bake'" in e["message"] and e["hint"]
    assert "out-of-memory" in describe_exit(-signal.SIGKILL, "unwrap")["hint"]
    assert "CUDA" in describe_exit(-signal.SIGABRT, "bake")["hint"]
    e = describe_exit(3, None)
    assert e["signal"] is None and "status 3" in e["message"] and "'start'" in e["message"]


@pytest.mark.parametrize(
    "host, loop",
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("gpu-host", False), ("", False)],
)
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_display_and_download_names_are_harmless():
    assert display_name("../../x") == "x"
    assert display_name("..\\..\\windows\\evil.glb") == "evil.glb"
    assert display_name("/etc/passwd") == "passwd"
    assert display_name("..") == "upload"
    assert display_name(None) == "upload"
    assert display_name("a\x00b\nc.glb") == "abc.glb"
    assert display_name("x" * 500).startswith("x") and len(display_name("x" * 500)) == 120
    assert download_stem('we"ird name;.glb') == "we_ird_name"
    assert download_stem("...") == "kiln"


def test_parse_job_options():
    d = parse_job_options('{"faces": 5000.0, "texture_size": 512, "device": "CPU"}', False)
    assert d["kind"] == "bake" and d["fault"] is None and d["reconstruct"] is None
    assert d["options"]["faces"] == 5000 and d["options"]["device"] == "cpu" and d["options"]["views"] == 100
    assert parse_job_options(None, False)["options"]["faces"] == 20000
    assert parse_job_options("  ", False)["kind"] == "bake"
    with pytest.raises(ApiError) as e:
        parse_job_options('{"faces": 10, "sharpness": 3}', False)
    assert e.value.status == 422 and "sharpness" in e.value.message and e.value.hint
    for text, code in (("{", "bad_json"), ("[]", "bad_json"), ('"x"', "bad_json"), ('{"kind": "paint"}', "unknown_kind"),
                       ('{"faces": 1}', "bad_option"), ('{"evaluate": "yes"}', "bad_option"), ('{"cage": NaN}', "bad_option"),
                       ('{"fault": "segfault@bake"}', "bad_option")):
        with pytest.raises(ApiError) as e:
            parse_job_options(text, False)
        assert e.value.status == 422 and e.value.code == code, text
    assert parse_job_options('{"fault": "hang@unwrap"}', True)["fault"] == "hang@unwrap"
    for bad in ('"hang"', '"crash@bake"', '"segfault@../x"', "5"):
        with pytest.raises(ApiError):
            parse_job_options('{"fault": %s}' % bad, True)


def _glb(json_doc: dict, bin_chunk: bytes = b"") -> bytes:
    js = json.dumps(json_doc).encode()
    js += b" " * (-len(js) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js
    if bin_chunk:
        chunks += struct.pack("<II", len(bin_chunk), 0x004E4942) + bin_chunk
    return b"glTF" + struct.pack("<II", 2, 12 + len(chunks)) + chunks


@pytest.mark.parametrize(
    "data, kind, expect",
    [
        (_glb({"asset": {"version": "2.0"}}), "bake", "glb"),
        (b'\xef\xbb\xbf  {"asset": {"version": "2.0"}}', "bake", "gltf"),
        (b"# comment\nmtllib a.mtl\no thing\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "bake", "obj"),
        (b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n", "bake", "ply"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 2, 2) + b"\x08\x02\x00\x00\x00" + b"\x00" * 8 + b"IEND\xaeB`\x82", "reconstruct", "png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "reconstruct", "jpeg"),
        (b"", "bake", 422),
        (_glb({"asset": {"version": "2.0"}})[:-3], "bake", 422),
        (_glb({"asset": {"version": "1.0"}}), "bake", 415),
        (_glb({"nodes": []}), "bake", 422),
        (b'{"buffers": [{"uri": "a.bin"}], "asset": {"version": "2.0"}}', "bake", 422),
        (b'{"nope": 1}', "bake", 415),
        (b"solid ascii stl\nfacet normal 0 0 1\n", "bake", 415),
        (b"hello there\nv 0 0 0\n", "bake", 415),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nvendor_ext 1\nf 1 2 3\n", "bake", "obj"),
        (b"v 0 0 0\nwhat\nis\nthis\nf 1 2 3\n", "bake", 415),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n" + b"\x00" * 39, "bake", 422),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n" + b"\x00" * 40, "bake", "ply"),
        (b"ply\nformat weird 1.0\nend_header\n", "bake", 422),
        (_glb({"asset": {"version": "2.0"}}), "reconstruct", 415),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "reconstruct", 422),
        (b"\xff\xd8\xff\xe0", "bake", 415),
    ],
)
def test_sniff(tmp_path, data, kind, expect):
    p = tmp_path / "upload.part"
    p.write_bytes(data)
    if isinstance(expect, str):
        assert sniff_upload(p, kind) == expect
    else:
        with pytest.raises(ApiError) as e:
            sniff_upload(p, kind)
        assert e.value.status == expect and e.value.message and e.value.hint


def test_sniff_zip(tmp_path):
    import zipfile

    def z(entries, name="u.zip"):
        p = tmp_path / name
        with zipfile.ZipFile(p, "w") as zf:
            for n, d in entries.items():
                zf.writestr(n, d)
        return p

    assert sniff_upload(z({"m/a.obj": b"v 0 0 0\n", "m/a.mtl": b""}), "bake") == "zip"
    with pytest.raises(ApiError) as e:
        sniff_upload(z({"/abs/a.obj": b"v 0 0 0\n"}, "abs.zip"), "bake")
    assert e.value.code == "unsafe_zip"
    with pytest.raises(ApiError) as e:
        sniff_upload(z({"a/../../b.obj": b"v 0 0 0\n"}, "up.zip"), "bake")
    assert e.value.code == "unsafe_zip"
    with pytest.raises(ApiError) as e:
        sniff_upload(z({"big.obj": b"v 0 0 0\n" * 1000}, "big.zip"), "bake", max_expanded=100)
    assert e.value.status == 413


def test_job_persistence_restart_and_retention_sweep(tmp_path):
    cfg = ServiceConfig(data_dir=tmp_path, retention_s=3600.0)
    sup = Supervisor(cfg)
    cfg.jobs_dir.mkdir(parents=True)
    now = time.time()
    jobs = {}
    for jid, state, finished in (("a" * 32, "succeeded", now - 7200), ("b" * 32, "failed", now - 60), ("c" * 32, "running", None)):
        job = Job(id=jid, kind="bake", options={}, source_name="x.glb", input_file="input.glb", input_format="glb", input_bytes=1,
                  state=state, finished_at=finished)
        (cfg.jobs_dir / jid).mkdir()
        (cfg.jobs_dir / jid / "job.json").write_text(json.dumps(job.to_persisted()))
        jobs[jid] = job
    (cfg.jobs_dir / ("d" * 32)).mkdir()  # no job.json: debris of a crash
    (cfg.jobs_dir / "not-a-job").mkdir()
    sup._load_persisted()
    assert set(sup.jobs) == {"a" * 32, "b" * 32, "c" * 32}
    assert not (cfg.jobs_dir / ("d" * 32)).exists()
    c = sup.get("c" * 32)
    assert c["state"] == "failed" and c["error"]["code"] == "service_restarted"
    assert sup.sweep() == 1  # only the job finished two hours ago
    assert not (cfg.jobs_dir / ("a" * 32)).exists() and sup.get("a" * 32) is None
    assert (cfg.jobs_dir / ("b" * 32)).exists()
    with pytest.raises(ValueError):
        sup.job_dir("../../etc")


def test_config_sweep_interval():
    assert ServiceConfig(data_dir=Path("."), retention_s=86400).sweep_interval() == 300
    assert ServiceConfig(data_dir=Path("."), retention_s=3).sweep_interval() == 0.75
    assert ServiceConfig(data_dir=Path("."), retention_s=0).sweep_interval() == 0.5
    assert GpuInfo("0", "X").to_dict() == {"id": "0", "name": "X", "uuid": None}
