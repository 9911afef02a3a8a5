"""Smoke run of the edit benchmark: every task, method and metric key is written."""
import json

import pytest

from diffeditor.bench import editbench


def test_editbench_smoke_writes_every_key(tmp_path):
    out = tmp_path / "eb.json"
    ck = tmp_path / "ck.jsonl"
    editbench.main(["--n", "2", "--steps", "10", "--random-weights", "--out", str(out), "--checkpoint", str(ck)])
    res = json.loads(out.read_text())
    assert res["n"] == 2 and res["steps"] == 10 and res["seed"] == 0
    assert res["reconstruction"]["ddim"]["psnr"] is not None and res["reconstruction"]["exact"]["psnr"] is not None
    assert set(res["tasks"]) == set(editbench.TASKS)
    common = {"seconds", "nfe"}
    for task, methods in res["tasks"].items():
        expected = set(editbench.ERASE_METHODS) if task == "erase" else {
            m for m in editbench.EDIT_METHODS if task in editbench.METHOD_TASKS.get(m, (task,))}
        if task == "drag" and editbench.dragloss_available():
            expected |= {"dragloss", "aldd"}
        assert set(methods) == expected, task
        for m, metrics in methods.items():
            keys = ({"concept_rate", "collateral", "gt_psnr"} if task == "erase"
                    else {"centroid_err_px", "iou", "bg_psnr", "gt_psnr"})
            keys |= {"point_err_px"} if task == "drag" else set()
            keys |= {"color_err"} if task == "appearance" else set()
            assert keys | common <= set(metrics), (task, m, sorted(metrics))
            assert {f"{k}_median" for k in keys} <= set(metrics)
            assert ("fail_rate" in metrics) == (task != "erase")
            assert all(v == v for v in metrics.values())  # no NaN
    per = json.loads(out.with_suffix(".scenes.json").read_text())
    assert len(per["move"]["diffeditor"]) == 2
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").stat().st_size > 0

    # a stopped run is rebuilt from its checkpoint: the same per-scene rows, hence the same means
    out2 = tmp_path / "eb2.json"
    editbench.main(["--steps", "10", "--random-weights", "--out", str(out2), "--from-checkpoints", str(ck)])
    res2 = json.loads(out2.read_text())
    assert res2["n"] == 2 and res2["scenes"] == [0, 1] and res2["tasks"] == res["tasks"]
    for k in ("ddim", "exact"):
        assert res2["reconstruction"][k]["psnr"] == pytest.approx(res["reconstruction"][k]["psnr"], abs=1e-3)

    # runs of the same scenes with different methods merge: split the checkpoint by method, rebuild from both
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lines = [json.loads(x) for x in ck.read_text().splitlines() if x.strip()]
    for path, keep in ((a, lambda m: m == "baseline"), (b, lambda m: m != "baseline")):
        path.write_text("".join(json.dumps({**r, "rows": {m: v for m, v in r["rows"].items() if keep(m)}}) + "\n"
                                for r in lines))
    out3 = tmp_path / "eb3.json"
    editbench.main(["--steps", "10", "--random-weights", "--out", str(out3), "--from-checkpoints", f"{a},{b}"])
    assert json.loads(out3.read_text())["tasks"] == res["tasks"]


def test_stats_separate_a_lost_object_from_the_typical_scene():
    rows = [{"scene": i, "centroid_err_px": e, "iou": 0.5} for i, e in enumerate([1.0, 2.0, 3.0, 90.5])]
    st = editbench.task_stats(rows, "move")
    assert st["centroid_err_px"] == pytest.approx(24.125)  # the lost object dominates the mean ...
    assert st["centroid_err_px_median"] == pytest.approx(2.5)  # ... not the median
    assert st["fail_rate"] == pytest.approx(0.25)
    drag = [{"scene": 0, "centroid_err_px": 30.0, "point_err_px": 3.0}]
    assert editbench.task_stats(drag, "drag")["fail_rate"] == 0.0  # drag fails on its point error


def test_resummarize_recomputes_statistics_without_model_calls(tmp_path):
    out = tmp_path / "eb.json"
    editbench.main(["--n", "1", "--steps", "4", "--random-weights", "--tasks", "move", "--methods", "baseline",
                    "--out", str(out)])
    res = json.loads(out.read_text())
    out2 = tmp_path / "again.json"
    editbench.main(["--resummarize", str(out), "--out", str(out2)])
    assert json.loads(out2.read_text())["tasks"] == res["tasks"]
