"""Each training stage killed (SIGKILL) after its second epoch and rerun finishes with the
weights and metrics of an uninterrupted run, on the tiny built-in run (tiny params, CPU). A
change of params or inputs starting afresh is tested in tests/core/test_resume.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_stage, write_params

EPOCHS = 3  # killed once the file says 2 epochs are done: the third, its scoring and saving left, time enough to kill it
# stage: (its params section, the resume file, the network it saves, its metrics file)
STAGES = {
    "train": ("train", "train", "models/classifier.pt", "metrics/train.json"),
    "affinity": ("affinity", "affinity", "models/affinity.pt", "metrics/affinity.json"),
    "segment_reference": ("segment", "segment_reference", "models/segmenter_gt.pt", "metrics/segment_reference.json"),
    "segment": ("segment", "segment", "models/segmenter.pt", "metrics/segment.json"),
}
COPY = ("data/prepared", "models", "outputs/seeds", "outputs/masks", "outputs/pseudo_labels", "outputs/refined",
        "outputs/confidence.csv", "outputs/boxes.json")


def _project(run: Path, dst: Path, section: str) -> None:
    for sub in COPY:
        (dst / sub).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (run / sub).is_dir() else shutil.copyfile)(run / sub, dst / sub)
    params = json.loads(json.dumps(TINY))
    params[section] = {**params[section], "epochs": EPOCHS, "num_workers": 0}
    if section == "segment":
        params["segment"]["epochs"] = EPOCHS
    write_params(dst, params)


def _timeless(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not (k.endswith("seconds") or k.endswith("_s"))}


def _kill_after_second_epoch(cwd: Path, stage: str, resume_name: str) -> None:
    """SIGKILL the stage's whole process group (under torchrun: the launcher and every rank,
    as a preempted job loses them) once its resume file says epoch >= 2."""
    state_file = cwd / "models/.resume" / f"{resume_name}.pt"
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file():
            try:
                if torch.load(state_file, weights_only=True)["epoch"] >= 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            except Exception:  # noqa: BLE001 - a file being renamed into place: read it again
                pass
        time.sleep(0.02)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, f"{stage} was not killed mid-run: {proc.stderr.read()[-2000:]}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_killed_training_stage_resumes_to_the_uninterrupted_result(pipeline_run, tmp_path, stage):
    section, resume_name, network, metrics = STAGES[stage]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for cwd in (whole, killed):
        _project(pipeline_run, cwd, section)
    result = run_stage(whole, stage)
    assert result.returncode == 0, result.stderr[-3000:]
    _kill_after_second_epoch(killed, stage, resume_name)
    result = run_stage(killed, stage)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch" in result.stderr
    a = torch.load(whole / network, weights_only=True)["state_dict"]
    b = torch.load(killed / network, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _timeless(json.loads((whole / metrics).read_text())) == _timeless(json.loads((killed / metrics).read_text()))
    assert not (killed / "models/.resume").exists() and not (whole / "models/.resume").exists()


def test_train_under_torchrun_in_two_processes_resumes_to_the_uninterrupted_result(pipeline_run, tmp_path):
    """train.processes: 2 (the stage relaunches itself under torchrun, and saves the network
    unwrapped, as one process does): rank 0 writes every rank's generators, the launcher and
    both ranks are killed, and the rerun's two ranks resume to the weights of an uninterrupted
    two-process run."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for cwd in (whole, killed):
        _project(pipeline_run, cwd, "train")
        params = json.loads(json.dumps(TINY))
        params["train"] = {**params["train"], "epochs": EPOCHS, "num_workers": 0, "processes": 2}
        write_params(cwd, params)
    result = run_stage(whole, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    _kill_after_second_epoch(killed, "train", "train")
    result = run_stage(killed, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch" in result.stderr
    a = torch.load(whole / "models/classifier.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "models/classifier.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("module.") for k in a)  # saved unwrapped: cams loads it as it is
    ma, mb = (json.loads((cwd / "metrics/train.json").read_text()) for cwd in (whole, killed))
    assert ma["processes"] == mb["processes"] == 2 and 0 <= ma["val_map"] <= 1 and _timeless(ma) == _timeless(mb)
    assert not (killed / "models/.resume").exists()
