"""pipeline.segment.segmenter (loss, test-time prediction, dataset checks, training, checkpoints) and
pipeline.segment.predict (labelling a folder), on tiny data generated here, on the CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from pipeline.core.config import SegmentParams
from pipeline.core.io import write_label_png
from pipeline.core.metrics import iou_per_class, mean_iou
from pipeline.core.training import build_optimizer, train_one_epoch
from pipeline.data.voc import IGNORE_INDEX, DatasetError, VOCDataset, write_sample, write_voc_meta
from pipeline.segment import predict
from pipeline.segment.segmenter import (
    CHECKPOINT_KEYS,
    EMA_WARMUP_POWER,
    SegmentationDataset,
    build_segmenter,
    load_segmenter,
    predict_probs,
    score_segmenter,
    segment_augmentation,
    segment_images,
    segmentation_loss,
    weight_average,
    write_image_class_labels,
)

CPU = torch.device("cpu")
ARCH, ENCODER, WIDTH = "FPN", "tu-resnet10t", 64  # the smallest fast smp/timm pair (~0.1 s a step at 64x64 on one core)
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


# ---- the loss ---------------------------------------------------------------------------------

def _reference_loss(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean of -log softmax of the true class over the pixels not labelled 255, pixel by pixel."""
    terms = []
    n, k, h, w = logits.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t != IGNORE_INDEX:
                    column = logits[i, :, y, x].double()
                    terms.append(float(torch.logsumexp(column, 0) - column[t]))
    return sum(terms) / len(terms)


def test_loss_is_the_mean_over_valid_pixels_and_ignored_pixels_contribute_nothing():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    ignored = torch.rand(2, 5, 6, generator=gen) < 0.4
    target[ignored] = IGNORE_INDEX
    assert 0 < int(ignored.sum()) < ignored.numel()

    a = logits.clone().requires_grad_()
    loss_a = segmentation_loss(a, target)
    loss_a.backward()
    assert loss_a.item() == pytest.approx(_reference_loss(logits, target), rel=1e-6)

    # other logits at the ignored pixels: the same value, the same gradient at the valid ones
    b = logits.clone()
    b.permute(0, 2, 3, 1)[ignored] = torch.randn(int(ignored.sum()), 4, generator=gen) * 50
    b.requires_grad_()
    loss_b = segmentation_loss(b, target)
    loss_b.backward()
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-6)
    grad_a, grad_b = a.grad.permute(0, 2, 3, 1), b.grad.permute(0, 2, 3, 1)
    torch.testing.assert_close(grad_b[~ignored], grad_a[~ignored])
    assert (grad_a[ignored] == 0).all() and (grad_b[ignored] == 0).all()
    assert (grad_a[~ignored] != 0).any()


def test_loss_with_every_pixel_ignored_is_zero_with_finite_gradients():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 4, 4), IGNORE_INDEX, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


# ---- test-time prediction ---------------------------------------------------------------------

class ShapeRecorder(nn.Module):
    """A 1x1 convolution (commutes with flips and with zero padding elsewhere); records input sizes."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


class ColumnRamp(nn.Module):
    """Logits that depend on the column alone (class 1 grows to the right): flipping matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-4, 4, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:])
        return torch.cat([torch.zeros_like(ramp), ramp], 1)


def test_predict_probs_pads_an_odd_size_and_crops_back():
    model, images = ShapeRecorder(), torch.randn(2, 3, 45, 70)
    probs = predict_probs(model, images)
    assert model.sizes == [(64, 96)]  # padded to multiples of 32
    assert probs.shape == (2, 3, 45, 70)
    # a pointwise model: the top-left crop of the padded output is the unpadded output
    torch.testing.assert_close(probs, model.conv(images).softmax(1), atol=1e-6, rtol=1e-5)


def test_predict_probs_with_scales_and_flip_sums_to_one_and_matches_no_flip_for_a_pointwise_model():
    model, images = ShapeRecorder(), torch.randn(2, 3, 45, 70)
    scales = (0.75, 1.0, 1.5)
    flipped = predict_probs(model, images, scales=scales, flip=True)
    plain = predict_probs(model, images, scales=scales, flip=False)
    assert flipped.shape == plain.shape == (2, 3, 45, 70)
    torch.testing.assert_close(flipped.sum(1), torch.ones(2, 45, 70))
    torch.testing.assert_close(flipped, plain, atol=1e-5, rtol=1e-5)
    assert {s[0] % 32 for s in model.sizes} == {0} and {s[1] % 32 for s in model.sizes} == {0}
    assert any(s[0] >= 64 and s[1] >= 96 for s in model.sizes) and any(s[1] == 64 for s in model.sizes)  # 1.5x and 0.75x ran


def test_predict_probs_flip_mirrors_the_copies_back():
    images = torch.randn(1, 3, 32, 64)
    plain = predict_probs(ColumnRamp(), images)
    flipped = predict_probs(ColumnRamp(), images, flip=True)
    assert not torch.allclose(plain, plain.flip(-1))
    torch.testing.assert_close(flipped, flipped.flip(-1))  # the average of a ramp and its mirror image
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)


def test_segment_images_keeps_to_each_images_classes():
    """classes=: each pixel takes the most probable of background and the image's own classes
    (a per-pixel loop over the allowed channels), never another class."""
    model = ShapeRecorder(k=5)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(3)]
    classes = [(1,), (0, 3), ()]
    free = segment_images(model, images, mean=MEAN, std=STD, device=CPU, flip=True)
    kept = segment_images(model, images, mean=MEAN, std=STD, device=CPU, flip=True, classes=classes)
    x = torch.stack([torch.from_numpy(im) for im in images]).permute(0, 3, 1, 2).float() / 255
    probs = predict_probs(model, (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None], flip=True).numpy()
    for n, image_classes in enumerate(classes):
        allowed = [0] + [c + 1 for c in image_classes]
        expected = np.empty((24, 40), np.uint8)
        for y in range(24):
            for x_ in range(40):
                expected[y, x_] = allowed[int(np.argmax([probs[n, c, y, x_] for c in allowed]))]
        np.testing.assert_array_equal(kept[n], expected)
        assert set(np.unique(kept[n])) <= set(allowed)
    assert not np.array_equal(np.stack(free), np.stack(kept))  # the restriction changed something
    assert set(np.unique(kept[2])) == {0}  # no classes: background everywhere
    with pytest.raises(ValueError, match="2 class lists for 3 images"):
        segment_images(model, images, mean=MEAN, std=STD, device=CPU, classes=classes[:2])


def test_write_image_class_labels_writes_every_id_and_scores_them_on_their_masks(colour_voc, tmp_path):
    """The self-training labels: one PNG per id, within the image's classes, and the confusion
    matrix of exactly those PNGs against the true masks."""
    from pipeline.core.io import read_label_png
    from pipeline.core.metrics import confusion_matrix

    model, k = ShapeRecorder(k=1 + len(COLOUR_CLASSES)), 1 + len(COLOUR_CLASSES)
    voc = VOCDataset(colour_voc, "train")
    out = tmp_path / "round"
    confusion = write_image_class_labels(model, voc, [voc.ids[:5], voc.ids[5:]], out, num_classes=k, mean=MEAN, std=STD,
                                         device=CPU)
    assert sorted(p.stem for p in out.iterdir()) == sorted(voc.ids)
    expected = np.zeros((k, k), np.int64)
    for image_id in voc.ids:
        labels = read_label_png(out / f"{image_id}.png")
        assert set(np.unique(labels)) <= {0, *(c + 1 for c in voc.labels(image_id))}
        expected += confusion_matrix(labels, voc.load_mask(image_id), k)
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.sum() == sum(voc.load_mask(i).size for i in voc.ids)


def test_score_segmenter_counts_every_pixel_of_its_labels_and_names_a_missing_mask(colour_voc):
    """The confusion matrix equals one rebuilt pixel by pixel from segment_images' labels and the
    masks (255 skipped); a held-out id without a mask stops it with the mask's path."""
    model, k = ShapeRecorder(k=1 + len(COLOUR_CLASSES)), 1 + len(COLOUR_CLASSES)
    voc = VOCDataset(colour_voc, "val")
    confusion = score_segmenter(model, voc, [voc.ids[:4], voc.ids[4:]], num_classes=k, mean=MEAN, std=STD, device=CPU,
                                scales=(1.0, 0.5), flip=True)
    expected = np.zeros((k, k), np.int64)
    for image_id in voc.ids:
        image, mask = voc.load_image(image_id), voc.load_mask(image_id)
        labels = segment_images(model, [image], mean=MEAN, std=STD, device=CPU, scales=(1.0, 0.5), flip=True)[0]
        for pred, true in zip(labels.ravel(), mask.ravel()):
            if true != 255:
                expected[true, pred] += 1
    np.testing.assert_array_equal(confusion, expected)
    voc.mask_path(voc.ids[4]).unlink()
    with pytest.raises(DatasetError, match=f"{voc.ids[4]}.png: no ground-truth mask for held-out id"):
        score_segmenter(model, voc, [voc.ids[:4], voc.ids[4:]], num_classes=k, mean=MEAN, std=STD, device=CPU)


# ---- the dataset's checks ---------------------------------------------------------------------

def test_segmentation_dataset_names_the_file_of_a_bad_label_map(voc_root, tmp_path):
    labels = tmp_path / "labels"
    ok = np.zeros((40, 60), np.uint8)
    ok[5:15, 10:20], ok[0] = 3, IGNORE_INDEX
    write_label_png(labels / "a.png", ok)
    voc = VOCDataset(voc_root, ["a", "b"])
    dataset = SegmentationDataset(voc, labels, 4, None, MEAN, STD)
    image, target = dataset[0]
    assert image.shape == (3, 40, 60) and target.dtype == torch.int64
    assert torch.equal(target, torch.from_numpy(ok).long())

    with pytest.raises(DatasetError, match=r"b\.png.*not found"):
        dataset[1]
    write_label_png(labels / "b.png", np.zeros((30, 51), np.uint8))  # b.jpg is 50x30
    with pytest.raises(DatasetError, match=r"labels/b\.png: labels are 51x30 \(WxH\) but the image is 50x30"):
        dataset[1]
    stray = np.zeros((30, 50), np.uint8)
    stray[3, 4], stray[5, 6] = 4, 9
    write_label_png(labels / "b.png", stray)
    with pytest.raises(DatasetError, match=r"labels/b\.png: label value\(s\) \[4, 9\] outside 0\.\.3 and 255"):
        dataset[1]


# ---- training ---------------------------------------------------------------------------------

COLOUR_CLASSES = ("red", "blue")


def _colour_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, list]:
    """Dark grey noise with a red rectangle and/or a blue disc: classes told apart by colour alone."""
    image = rng.integers(20, 90, (size, size, 1), dtype=np.uint8).repeat(3, 2)
    mask = np.zeros((size, size), np.uint8)
    objects = []
    kinds = [rng.integers(1, 3)] if rng.random() < 0.4 else [1, 2]
    for kind in kinds:
        r = int(rng.integers(12, 20))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        shape = np.zeros((size, size), np.uint8)
        if kind == 1:
            cv2.rectangle(shape, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
        else:
            cv2.circle(shape, (cx, cy), r, 1, -1)
        on = shape.astype(bool)
        image[on] = (230, 30, 30) if kind == 1 else (30, 30, 230)
        mask[on] = kind
        ys, xs = np.nonzero(on)
        objects.append((COLOUR_CLASSES[kind - 1], (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
    return image, mask, objects


@pytest.fixture
def colour_voc(tmp_path) -> Path:
    root = tmp_path / "colour" / "VOC2012"
    rng = np.random.default_rng(0)
    lists = {"train": [f"t{i}" for i in range(8)], "val": [f"v{i}" for i in range(6)]}
    for image_id in lists["train"] + lists["val"]:
        image, mask, objects = _colour_image(rng)
        write_sample(root, image_id, image, mask, objects)
    write_voc_meta(root, COLOUR_CLASSES, lists)
    return root


def test_a_tiny_segmenter_learns_colour_classes_well_above_chance(colour_voc):
    torch.manual_seed(0)
    k = 1 + len(COLOUR_CLASSES)
    model = build_segmenter(ARCH, ENCODER, k, decoder_channels=WIDTH)
    augment = segment_augmentation(64, (0.75, 1.25), fill=[255 * m for m in MEAN], seed=0)
    train = SegmentationDataset(VOCDataset(colour_voc, "train"), None, k, augment, MEAN, STD)
    loader = DataLoader(train, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, SegmentParams(lr=1e-3, head_lr_mult=10.0))
    epochs, step = 20, 0  # 40 steps, ~4 s on one free core
    for _ in range(epochs):
        terms, step = train_one_epoch(model, loader, optimizer, schedule="poly", step=step, total_steps=epochs * len(loader),
                                      device=CPU, criterion=segmentation_loss)
    val = VOCDataset(colour_voc, "val")
    confusion = score_segmenter(model, val, [val.ids[:3], val.ids[3:]], num_classes=k, mean=MEAN, std=STD, device=CPU)
    # chance: the best constant answer labels every pixel with the commonest class (background),
    # scoring its pixel share (~0.8) on that class and 0 on the others; random labels score lower.
    # Measured at 40 steps: mIoU 0.85 (0.83 to 0.85 over data and torch seeds 0 to 3), object classes 0.69 or more
    chance = confusion.sum(1).max() / confusion.sum() / k
    iou = iou_per_class(confusion)
    assert mean_iou(confusion) > max(0.6, 2 * chance), (terms, chance, iou)
    assert iou.min() > 0.5, (terms, iou)


# ---- the average of the weights (segment.ema) -------------------------------------------------

def test_weight_average_follows_the_warmed_up_recursion():
    """Reference written out: at update s = 1, 2, ... the decay is min(cap, 1 - s ** -power)
    (0 at the first update: the average starts as the weights), and
    avg_s = decay * avg_(s-1) + (1 - decay) * w_s, buffers included."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    cap = 0.6
    average = weight_average(model, cap)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for s in range(1, 7):
        with torch.no_grad():
            for v in model.state_dict().values():
                v.copy_(torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v + 1)
        average.update(model, step=s)
        decay = min(cap, 1 - s ** -EMA_WARMUP_POWER)
        for k, w in model.state_dict().items():
            if w.is_floating_point():
                reference[k] = decay * reference[k] + (1 - decay) * w
    assert decay == cap  # the cap was reached within the steps checked
    for k, v in average.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, reference[k], rtol=1e-6, atol=1e-6, msg=k)
    assert average.module is not model


def test_train_one_epoch_calls_after_step_after_each_optimizer_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    loader = [(torch.randn(4, 3, 2, 2), torch.randint(0, 2, (4, 3)).float()) for _ in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    seen, before = [], [model[0].weight.detach().clone()]

    def after_step(step: int) -> None:
        seen.append(step)
        assert not torch.equal(model[0].weight, before[-1])  # the step has been taken
        before.append(model[0].weight.detach().clone())

    _, step = train_one_epoch(model, loader, optimizer, schedule="constant", step=5, total_steps=8, device=CPU,
                              after_step=after_step)
    assert seen == [6, 7, 8] and step == 8


# ---- checkpoints ------------------------------------------------------------------------------

def _save_checkpoint(path: Path, model: nn.Module, num_classes: int, **settings) -> None:
    """What stages/segment.py saves."""
    torch.save({
        "state_dict": model.state_dict(), "arch": ARCH, "encoder": ENCODER, "decoder_channels": WIDTH,
        "num_classes": num_classes, "class_names": ["background", *COLOUR_CLASSES][:num_classes],
        "mean": MEAN, "std": STD, "scales": [1.0], "flip": False, "crf": False, "label_source": "gt", **settings,
    }, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained 3-class segmenter saved as the segment stage saves it (BN statistics moved off
    their initial values, so that loading them is checked too)."""
    torch.manual_seed(0)
    model = build_segmenter(ARCH, ENCODER, 3, decoder_channels=WIDTH)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64) * 3 + 1)
    path = tmp_path_factory.mktemp("ckpt") / "segmenter.pt"
    _save_checkpoint(path, model.eval(), 3, scales=[1.0, 0.5], flip=True)
    return path


def test_load_segmenter_round_trip(checkpoint):
    saved = torch.load(checkpoint, weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(saved)
    model, ckpt = load_segmenter(checkpoint, CPU)
    assert not model.training and ckpt["scales"] == [1.0, 0.5] and ckpt["flip"] is True
    fresh = build_segmenter(ARCH, ENCODER, 3, decoder_channels=WIDTH)
    fresh.load_state_dict(saved["state_dict"])
    images = torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(predict_probs(model, images, scales=(1.0, 0.5), flip=True),
                               predict_probs(fresh, images, scales=(1.0, 0.5), flip=True))
    other = build_segmenter(ARCH, ENCODER, 3, decoder_channels=WIDTH)  # different random weights: the test can tell
    assert not torch.allclose(predict_probs(model, images), predict_probs(other, images))


def test_load_segmenter_rejects_foreign_truncated_and_mismatched_files(checkpoint, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": 1}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: not a segmenter checkpoint.*missing state_dict"):
        load_segmenter(foreign, CPU)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pt: cannot load"):
        load_segmenter(truncated, CPU)
    mismatched = tmp_path / "mismatched.pt"
    _save_checkpoint(mismatched, build_segmenter(ARCH, ENCODER, 2, decoder_channels=WIDTH), 3)
    with pytest.raises(ValueError, match=r"mismatched\.pt: weights do not fit"):
        load_segmenter(mismatched, CPU)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_segmenter(tmp_path / "absent.pt", CPU)


# ---- labelling a folder -----------------------------------------------------------------------

def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two good images of different sizes and one file that is not an image."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_image(45, 70, 0)).save(images / "first.png")
    Image.fromarray(_image(33, 50, 1)).save(images / "second.jpg", quality=95)
    (images / "bad.jpg").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not listed")
    return images


def test_predict_stops_at_a_bad_image_naming_it_and_writes_nothing(checkpoint, folder, tmp_path, caplog):
    out = tmp_path / "out"
    with pytest.raises(predict.BadImageError, match=r"bad\.jpg: cannot read image"):
        predict.predict_folder(checkpoint, folder, out, device="cpu", progress=None)
    assert not out.exists()
    with caplog.at_level(logging.ERROR, logger="wsl"):
        assert predict.main(["--model", str(checkpoint), "--images", str(folder), "--out", str(out), "--device", "cpu"]) == 1
    assert "bad.jpg" in caplog.text
    assert not out.exists()


def test_predict_skip_bad_writes_the_good_ones(checkpoint, folder, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="wsl"):
        code = predict.main(["--model", str(checkpoint), "--images", str(folder), "--out", str(out), "--device", "cpu", "--skip-bad"])
    assert code == 0
    assert "skipped" in caplog.text and "bad.jpg" in caplog.text and "2 image(s) labelled, 1 skipped" in caplog.text
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["first.png", "second.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["first.jpg", "second.jpg"]
    for stem, (h, w) in (("first", (45, 70)), ("second", (33, 50))):
        with Image.open(out / "labels" / f"{stem}.png") as label:
            assert label.mode == "P" and label.size == (w, h)
            values = np.array(label)
        assert values.max() <= 2
        with Image.open(out / "overlays" / f"{stem}.jpg") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (w, h)

    # the labels are the model's, whatever the batching (batch of 1, no overlays: same labels)
    again = tmp_path / "again"
    summary = predict.predict_folder(checkpoint, folder, again, batch_size=1, device="cpu", skip_bad=True, overlays=False, progress=None)
    assert summary == predict.PredictSummary(2, (folder / "bad.jpg",))
    assert not (again / "overlays").exists()
    for stem in ("first", "second"):
        assert np.array_equal(np.array(Image.open(again / "labels" / f"{stem}.png")), np.array(Image.open(out / "labels" / f"{stem}.png")))


def test_predict_batches_same_size_images_and_skips_data_damaged_past_the_header(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(_image(40, 40, i)).save(images / f"same{i}.jpg", quality=95)
    data = (images / "same1.jpg").read_bytes()
    (images / "same1.jpg").write_bytes(data[: len(data) // 2])  # a valid header, the pixels cut off
    with pytest.raises(predict.BadImageError, match=r"same1\.jpg: cannot decode image"):
        predict.predict_folder(checkpoint, images, tmp_path / "out", batch_size=8, device="cpu", progress=None)
    assert not (tmp_path / "out" / "labels" / "same1.png").exists()
    summary = predict.predict_folder(checkpoint, images, tmp_path / "out", batch_size=8, device="cpu", skip_bad=True, progress=None)
    assert summary == predict.PredictSummary(2, (images / "same1.jpg",))
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["same0.png", "same2.png"]

    # a failing run into an earlier output leaves every file of it byte for byte
    def snapshot():
        return {str(p.relative_to(tmp_path / "out")): p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}

    before = snapshot()
    with pytest.raises(predict.BadImageError, match=r"same1\.jpg: cannot decode image"):
        predict.predict_folder(checkpoint, images, tmp_path / "out", batch_size=8, device="cpu", progress=None)
    (images / "notes.png").write_text("not an image")
    with pytest.raises(predict.BadImageError, match=r"notes\.png: cannot read image"):
        predict.predict_folder(checkpoint, images, tmp_path / "out", batch_size=8, device="cpu", progress=None)
    assert snapshot() == before


def test_predict_rejects_shared_stems_and_missing_or_empty_folders(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(FileNotFoundError, match=r"images: no image files"):
        predict.predict_folder(checkpoint, images, tmp_path / "out", device="cpu", progress=None)
    with pytest.raises(FileNotFoundError, match=r"nowhere: image folder not found"):
        predict.predict_folder(checkpoint, tmp_path / "nowhere", tmp_path / "out", device="cpu", progress=None)
    Image.fromarray(_image(20, 30, 0)).save(images / "a.jpg")
    Image.fromarray(_image(20, 30, 1)).save(images / "a.png")
    Image.fromarray(_image(20, 30, 2)).save(images / "b.png")
    with pytest.raises(ValueError, match=r"a\.jpg and a\.png"):
        predict.predict_folder(checkpoint, images, tmp_path / "out", device="cpu", progress=None)
    assert predict.main(["--model", str(checkpoint), "--images", str(images), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 1
    assert not (tmp_path / "out").exists()

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"")
    args = ["--model", str(checkpoint), "--images", str(only_bad), "--out", str(tmp_path / "out"), "--device", "cpu", "--skip-bad"]
    assert predict.main(args) == 1  # every image skipped is not a success


def test_predict_reads_cmyk_16_bit_and_one_pixel_images(checkpoint, tmp_path):
    """Odd but valid images are labelled at their own size: a CMYK JPEG, a 16-bit greyscale PNG,
    a 1 x 1 PNG, a palette PNG with transparency."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_image(30, 40, 0)).convert("CMYK").save(images / "cmyk.jpg", quality=95)
    Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)).save(images / "deep.png")
    assert Image.open(images / "deep.png").mode.startswith("I")
    Image.fromarray(_image(1, 1, 1)).save(images / "dot.png")
    palette = Image.fromarray(_image(20, 24, 2)).convert("P")
    palette.info["transparency"] = 0
    palette.save(images / "pal.png")
    summary = predict.predict_folder(checkpoint, images, tmp_path / "out", device="cpu", progress=None)
    assert summary == predict.PredictSummary(4)
    for stem, (h, w) in (("cmyk", (30, 40)), ("deep", (30, 40)), ("dot", (1, 1)), ("pal", (20, 24))):
        with Image.open(tmp_path / "out" / "labels" / f"{stem}.png") as label:
            assert label.size == (w, h) and label.mode == "P"


@pytest.mark.parametrize(("label_source", "export", "folder"), [
    ("pseudo", "refined", "outputs/refined"), ("pseudo", "crf", "outputs/pseudo_labels"),
    ("crf", "refined", "outputs/pseudo_labels"), ("refined", "crf", "outputs/refined")])
def test_training_labels_dir_follows_label_source_over_the_export(tmp_path, monkeypatch, label_source, export, folder):
    from types import SimpleNamespace

    from pipeline.core.errors import MissingInputError
    from pipeline.segment.recipe import training_labels_dir

    monkeypatch.chdir(tmp_path)
    index = SimpleNamespace(splits={"train": ["a", "b"]})
    labels = Path(folder) / "VOCdevkit" / "VOC2012" / "SegmentationClass"
    labels.mkdir(parents=True)
    write_label_png(labels / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(MissingInputError, match=rf"{labels / 'b.png'}: pseudo-label not found \(1 of 2 missing\).*"
                                                 rf"segment.label_source: {label_source}, refine.export: {export}"):
        training_labels_dir(label_source, export, index)
    write_label_png(labels / "b.png", np.zeros((4, 4), np.uint8))
    assert training_labels_dir(label_source, export, index) == labels
