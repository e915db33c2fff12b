"""Worker pre-warm: one tiny real bake through the pipeline; on the CPU it is cheap and harmless."""

from engine.pipeline.warmup import warm_up


def test_warm_up_bakes_on_the_cpu():
    out = warm_up("cpu")
    assert out.get("error") is None, out
    assert out["backend"] == "cpu"
    assert out["seconds"] >= 0


def test_warm_up_reports_instead_of_raising():
    out = warm_up("no-such-device")  # an invalid option: the worker must still start
    assert "error" in out and "device" in out["error"]
