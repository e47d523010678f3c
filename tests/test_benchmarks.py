"""The benchmarks run (smoke settings) and write the JSON keys the issue names.

Speed is never asserted here; only that each benchmark runs, writes its results and,
for cam_speed, that the maps it times agree with pytorch-grad-cam's.
"""

import json
import os

import pytest

from benchmarks import cam_speed, crf_speed, multiscale, pipeline_stages


def _read(path):
    return json.loads(path.read_text())


def test_cam_speed_quick(tmp_path):
    cam_speed.main(["--quick", "--ks", "1", "2", "--out", str(tmp_path)])
    out = _read(tmp_path / "cam_speed_quick.json")
    assert out["machine"]["torch_threads"] >= 1
    for k in ("k1", "k2"):
        res = out["results"][k]
        assert res["max_map_difference_vs_pytorch_grad_cam"] < 1e-4  # the timed maps are the same maps
        for method in ("gradcam", "gradcampp"):
            assert res["methods"][method]["ratio_vs_floor"] > 0
            assert res["methods"][method]["speedup_vs_pytorch_grad_cam"] > 0
        assert "speedup_vs_pytorch_grad_cam" not in res["methods"]["cam"]  # no peer for CAM


def test_multiscale_quick(tmp_path):
    multiscale.main(["--quick", "--out", str(tmp_path)])
    res = _read(tmp_path / "multiscale_quick.json")["results"]
    assert set(res) == {"contiguous", "channels_last", "channels_last_speedup"}
    assert res["contiguous"]["ratio_vs_floor"] > 0


def test_crf_speed_quick(tmp_path):
    crf_speed.main(["--quick", "--out", str(tmp_path)])
    out = _read(tmp_path / "crf_speed_quick.json")
    assert out["setting"]["source"] == "generated 500x375"
    assert out["results"]["present"]["throughput_ratio"] > 0
    assert out["results"]["all_labels_cost_vs_present"] > 0


def test_tree_memory_sees_a_child_and_its_peak():
    import subprocess
    import sys

    # a child that holds 200 MiB, frees it, says so, and waits for its stdin to close
    code = ("import sys; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); del b; "
            "print('freed', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "freed"  # the high-water mark remembers the 200 MiB
        child_now, child_peak = pipeline_stages._tree_memory(child.pid)
        tree, _ = pipeline_stages._tree_memory(os.getpid())
    finally:
        child.stdin.close()
        child.wait()
    with open("/proc/self/status") as f:
        own = int(next(line for line in f if line.startswith("VmRSS")).split()[1]) * 1024
    assert child_peak >= 200 * 2**20 > child_now  # the freed peak is still seen
    assert tree >= 0.9 * own + child_now  # the child is counted in its parent's tree


def test_scale_on_two_tiny_sizes(tmp_path):
    """benchmarks.scale runs the stages at each size and writes seconds per image, the
    marginal cost between sizes and the memory ratios (here the prepare stage alone)."""
    import yaml

    from benchmarks import scale

    params = yaml.safe_load((scale.ROOT / "params.yaml").read_text())
    params["data"]["builtin"].update(num_train=8, num_val=2, image_size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = scale.main(["--sizes", "16", "8", "--stages", "prepare", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path)])
    assert sorted(out["results"]) == ["16", "8"] and out["setting"]["sizes"] == [8, 16]
    small, large = out["results"]["8"]["stages"]["prepare"], out["results"]["16"]["stages"]["prepare"]
    assert out["results"]["16"]["num_val"] == 4 and large["images"] == 16
    assert large["s_per_img"] == pytest.approx(large["wall_s"] / 16, abs=1e-5)
    assert large["marginal_s_per_img"] == pytest.approx((large["wall_s"] - small["wall_s"]) / 8, abs=1e-5)
    assert "marginal_s_per_img" not in small
    assert out["flatness"]["prepare"]["peak_rss_largest_over_smallest"] > 0
    assert _read(tmp_path / "scale.json")["flatness"] == out["flatness"]


def test_dvc_scale_smoke(tmp_path):
    from benchmarks import dvc_scale

    dvc_scale.main(["--sizes", "10", "20", "--runs", "1", "--scratch", str(tmp_path), "--out", str(tmp_path)])
    rows = _read(tmp_path / "dvc_scale.json")["results"]
    assert [r["images"] for r in rows] == [10, 20] and [r["files"] for r in rows] == [40, 80]
    for r in rows:
        assert r["noop_repro_s"] > 0 and r["status_s"] > 0 and r["cache_mib"] > 0
    assert rows[1]["noop_growth_vs_images"] > 0
