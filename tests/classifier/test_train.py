import numpy as np
import pytest
import torch

from pipeline.classifier.models import build_classifier
from pipeline.core.config import TrainParams
from pipeline.core.device import resolve_device, to_tensor
from pipeline.core.training import build_optimizer, lr_factor, train_one_epoch


def test_lr_schedules():
    assert lr_factor("poly", 0, 100) == 1.0
    assert lr_factor("poly", 50, 100) == pytest.approx(0.5**0.9)
    assert lr_factor("poly", 100, 100) == 0.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("constant", 70, 100) == 1.0
    with pytest.raises(ValueError, match="valid: constant, cosine, poly"):
        lr_factor("step", 1, 2)


def test_head_learns_faster():
    model = build_classifier("resnet18", 3, output_stride=32)
    opt = build_optimizer(model, TrainParams(lr=0.01, head_lr_mult=10.0, optimizer="sgd"))
    backbone, head = opt.param_groups
    assert backbone["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    for name, new in (("vgg16", lambda m: m.classifier[-1]), ("timm:resnet10t", lambda m: m.net.get_classifier())):
        other = build_classifier(name, 3, output_stride=32)
        groups = build_optimizer(other, TrainParams(lr=0.01)).param_groups
        assert {id(p) for p in groups[1]["params"]} == {id(p) for p in new(other).parameters()}
        assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(other.parameters()))
    with pytest.raises(ValueError, match="valid: adamw, sgd"):
        build_optimizer(model, TrainParams(optimizer="lamb"))


def test_to_tensor_normalises():
    image = np.full((2, 3, 3), 255, np.uint8)
    x = to_tensor(image, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 2, 3) and torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize("cuda", [False, True])
def test_device_names(monkeypatch, cuda):
    """``auto`` is CUDA exactly when CUDA is available, checked both ways on any machine
    (torch.device("cuda:1") is only a name: nothing touches a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if cuda:
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    else:
        with pytest.raises(RuntimeError, match="device 'cuda:1' requested but CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device 'tpu'; valid: auto, cpu, cuda, cuda:<index>"):
        resolve_device("tpu")


def test_amp_dtype_choices():
    from pipeline.core.device import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None  # CPU autocast is slower than float32 on most CPUs
    assert amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("fp16", cpu) is torch.float16
    with pytest.raises(ValueError, match="valid: auto, off, bf16, fp16"):
        amp_dtype("half", cpu)


def test_one_epoch_under_bf16_autocast_learns():
    """The AMP path runs on the CPU too: bf16 autocast, float32 loss, weights updated."""
    from torch.utils.data import DataLoader, TensorDataset

    from pipeline.core.training import train_one_epoch

    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, weights="none", output_stride=32)
    x = torch.randn(8, 3, 32, 32)
    y = (torch.rand(8, 3) > 0.5).float()
    params = TrainParams(lr=1e-3)
    opt = build_optimizer(model, params)
    before = model.head.weight.detach().clone()
    terms, step = train_one_epoch(model, DataLoader(TensorDataset(x, y), batch_size=4), opt, schedule="constant", step=0,
                                  total_steps=2, device=torch.device("cpu"), amp=torch.bfloat16)
    assert step == 2 and set(terms) == {"loss"} and np.isfinite(terms["loss"])
    assert not torch.equal(before, model.head.weight)


@pytest.mark.parametrize("shape", [(200, 150), (900, 700)])
def test_irn_augmentation_gives_crops_of_the_size(shape):
    from pipeline.classifier.train import train_augmentation

    aug = train_augmentation(256, seed=0, kind="irn", fill=(124, 116, 104))
    image = np.full((*shape, 3), 7, np.uint8)
    out = [aug(image=image)["image"] for _ in range(4)]
    assert all(o.shape == (256, 256, 3) for o in out)
    if shape == (200, 150):  # long side resized to 320..640: a 150 px side can leave mean-coloured padding
        assert any((o == (124, 116, 104)).all(axis=-1).any() for o in out)
    with pytest.raises(ValueError, match="valid: resized_crop, irn"):
        train_augmentation(64, kind="mixup")


def test_crop_area_sets_the_share_of_the_image_a_crop_takes():
    """Vertical stripes 5 px wide on a 100 px square: a crop of the whole area, resized to
    100 px, keeps all 19 edges of a row; a crop of a tenth of the area (27 to 37 px wide for
    aspect ratios 0.75 to 1.33) keeps at most 8. Colour jitter keeps white above black."""
    from pipeline.classifier.train import train_augmentation

    image = np.zeros((100, 100, 3), np.uint8)
    image[:, (np.arange(100) // 5) % 2 == 1] = 255

    def edges(crop_area):
        aug = train_augmentation(100, seed=0, crop_area=crop_area)
        counts = []
        for _ in range(20):
            row = aug(image=image)["image"].astype(float).mean(axis=-1)[50]
            bright = row > row.mean()
            counts.append(int(np.count_nonzero(bright[1:] != bright[:-1])))
        return counts

    assert edges((1.0, 1.0)) == [19] * 20
    assert max(edges((0.1, 0.1))) <= 8
    assert min(edges((0.5, 1.0))) >= 11  # the default: 61 to 100 px wide


class _CropOfOneImage(torch.utils.data.Dataset):
    """The same 64x64 image, randomly cropped by a seeded albumentations pipeline."""

    def __init__(self, seed: int) -> None:
        import albumentations as A

        self.image = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3).astype(np.uint8)
        self.transform = A.Compose([A.RandomCrop(16, 16), A.HorizontalFlip(p=0.5)], seed=seed)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(image=self.image)["image"].copy())


def test_loader_workers_draw_different_augmentations():
    """With a seeded transform every DataLoader worker gets a copy of one generator
    (albumentations 2.0.8); make_train_loader reseeds each, so the two workers' crops differ
    and a second loader with the same seed repeats them."""
    from pipeline.core.distributed import DistInfo
    from pipeline.core.training import make_train_loader

    def crops() -> list[torch.Tensor]:
        loader, _ = make_train_loader(_CropOfOneImage(seed=3), batch_size=1, info=DistInfo(), seed=0,
                                      generator=torch.Generator().manual_seed(0), num_workers=2, device=torch.device("cpu"))
        return [b[0] for b in loader]

    first = crops()
    # workers take batches in turn: batch 2i from worker 0, batch 2i + 1 from worker 1
    assert any(not torch.equal(first[i], first[i + 1]) for i in range(0, 8, 2))
    assert sum(torch.equal(first[i], first[i + 1]) for i in range(0, 8, 2)) < 4
    again = crops()
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("section", ["train", "segment", "affinity"])
def test_global_batch_must_divide_by_the_ranks(section):
    from pipeline.core.distributed import DistInfo, check_global_batch

    check_global_batch(8, DistInfo(world_size=4), section)
    check_global_batch(7, DistInfo(), section)  # one process takes any batch
    with pytest.raises(ValueError, match=rf"^{section}\.batch_size 6 is the global batch: it must divide by the number of processes \(4\)$"):
        check_global_batch(6, DistInfo(rank=1, world_size=4), section)


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_freeze_bn_keeps_the_running_statistics_and_trains_the_rest(freeze_bn):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.new_layers = lambda: model[4]
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone(), model[0].weight.detach().clone())
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 8, 8) + 3.0, (torch.rand(8, 2) > 0.5).float()), batch_size=4)
    train_one_epoch(model, loader, build_optimizer(model, TrainParams(lr=1e-2)), schedule="constant", step=0, total_steps=2,
                    device=torch.device("cpu"), freeze_bn=freeze_bn)
    stats_kept = torch.equal(before[0], bn.running_mean) and torch.equal(before[1], bn.running_var)
    assert stats_kept == freeze_bn
    assert not torch.equal(before[2], bn.weight) and not torch.equal(before[3], model[0].weight)  # scale and convs learn
    assert bn.training != freeze_bn  # left as the epoch set it
