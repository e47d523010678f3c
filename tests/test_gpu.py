"""The CUDA paths: seeds, training and the stages on a GPU agree with the CPU.

Every test here needs a CUDA device and is skipped without one (CI and the
development machine have none; they ran on a lent H100, see docs/scaling.md's GPU
section). Comparisons in float32 turn TF32 off, so the GPU computes what the CPU
does up to summation order; the autocast tests compare bf16 against float32.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.cam.methods import multiscale_cams
from pipeline.classifier.models import build_classifier
from pipeline.classifier.train import evaluate_map
from pipeline.core.config import TrainParams
from pipeline.core.device import amp_dtype, resolve_device
from pipeline.core.training import build_optimizer, train_one_epoch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine; run on a GPU machine)")

METHODS = ["cam", "gradcam", "gradcampp", "xgradcam", "layercam", "counterfactual", "scorecam", "saliency"]


@pytest.fixture(autouse=True)
def exact_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model_and_batch():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 6, weights="none", output_stride=16).eval()
    images = torch.randn(3, 3, 64, 80)
    return model, images, [[0, 2], [5], [1, 3, 4]]


def test_auto_device_and_amp_pick_the_gpu():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert amp_dtype("auto", device) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert amp_dtype("off", device) is None


@pytest.mark.parametrize("method", METHODS)
def test_cuda_maps_equal_cpu_maps(method):
    """Multi-scale + flip seeds on the GPU (channels_last, as the stage runs them) equal the CPU's."""
    model, images, ids = _model_and_batch()
    cpu = multiscale_cams(model, images, ids, method, scales=(1.0, 1.5), flip=True, scorecam_batch_size=128)
    gpu_model = model.cuda().to(memory_format=torch.channels_last)
    gpu = multiscale_cams(gpu_model, images.cuda().contiguous(memory_format=torch.channels_last),
                          [torch.tensor(i).cuda() for i in ids], method, scales=(1.0, 1.5), flip=True, scorecam_batch_size=128)
    # saliency is a pixel-level gradient through the whole network: a pre-activation within
    # rounding of zero flips its ReLU gate on one device and not the other (measured on an
    # H100: largest difference 3.5e-3, mean 3.4e-4); the feature-map methods agree to 4e-6
    atol = 1e-2 if method == "saliency" else 1e-4
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda" and g.dtype == torch.float32
        torch.testing.assert_close(g.cpu(), c, atol=atol, rtol=0)
        assert (g.cpu() - c).abs().mean() < atol / 10


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam"])
def test_bf16_autocast_maps_close_to_float32(method):
    """Under bf16 autocast (``cam.amp: auto`` on a GPU) the maps stay close to float32's:
    bf16 keeps 8 bits of mantissa, so per-pixel differences of a few 1e-2 are expected."""
    model, images, ids = _model_and_batch()
    model, images = model.cuda().to(memory_format=torch.channels_last), images.cuda()
    full = multiscale_cams(model, images, ids, method, scales=(1.0, 1.5), flip=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = multiscale_cams(model, images, ids, method, scales=(1.0, 1.5), flip=True)
    for f, h in zip(full, half):
        assert h.dtype == torch.float32
        assert (h - f).abs().mean() < 0.02 and (h - f).abs().max() < 0.15
        corr = torch.corrcoef(torch.stack([f.flatten(), h.flatten()]))[0, 1]
        assert corr > 0.99


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_training_on_cuda_learns(amp):
    """A few epochs on a separable toy problem under each precision: the loss falls and
    the mAP is perfect (fp16 goes through the gradient scaler, as the stage does)."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    x = torch.randn(32, 3, 32, 32)
    y = torch.zeros(32, 2)
    y[:16, 0] = 1
    y[16:, 1] = 1
    x[:16, 0] += 2.0  # class 0: a red cast; class 1: a blue one
    x[16:, 2] += 2.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True, pin_memory=True)
    model = build_classifier("resnet18", 2, weights="none", output_stride=32).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, TrainParams(lr=1e-3, optimizer="adamw"))
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    losses, step = [], 0
    for _ in range(8):
        terms, step = train_one_epoch(model, loader, optimizer, schedule="constant", step=step, total_steps=32,
                                      device=device, amp=dtype, scaler=scaler)
        losses.append(terms["loss"])
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert next(model.parameters()).dtype == torch.float32  # autocast never casts the weights
    assert evaluate_map(model, loader, device, dtype) == pytest.approx(1.0)


def test_stages_on_cuda_match_the_cpu(tmp_path):
    """The tiny pipeline with ``device: auto`` runs on the GPU; seeds from its checkpoint
    computed by the ``cams`` stage on the GPU in float32 equal those computed on the CPU
    (stored float16), and with bf16 autocast stay close."""
    from conftest import TINY, run_stage, write_params

    def run_exact_stage(name):  # cuDNN convolutions default to TF32; this turns it off for the process
        env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}
        return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)

    params = json.loads(json.dumps(TINY))
    params["train"]["device"] = params["cam"]["device"] = "auto"
    write_params(tmp_path, params)
    for stage in ("prepare", "train"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 0, result.stderr[-3000:]
    seeds = {}
    for name, device, amp in (("cpu", "cpu", "off"), ("cuda", "auto", "off"), ("cuda_bf16", "auto", "auto")):
        params["cam"].update(device=device, amp=amp)
        write_params(tmp_path, params)
        result = run_exact_stage("cams")
        assert result.returncode == 0, result.stderr[-3000:]
        seeds[name] = {p.stem: np.load(p)["maps"].astype(np.float32) for p in sorted((tmp_path / "outputs/seeds").glob("*.npz"))}
    assert seeds["cpu"].keys() == seeds["cuda"].keys() and len(seeds["cpu"]) == 24
    for image_id, ref in seeds["cpu"].items():
        np.testing.assert_allclose(seeds["cuda"][image_id], ref, atol=2e-3)  # float16 storage: 1 ulp near 1 is 1e-3
        assert np.abs(seeds["cuda_bf16"][image_id] - ref).mean() < 0.03
    for stage in ("postprocess", "crf", "evaluate"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 0, result.stderr[-3000:]
    assert 0 <= json.loads((tmp_path / "metrics/seeds.json").read_text())["miou_at_best_bg"] <= 1
