"""LPCAM (pipeline.cam.prototypes and the ``lpcam`` CAM method): each step against a slow
reference written here from the paper's definitions (Chen and Sun, CVPR 2023, Sec. 3; its
code's ``make_lpcam.py``), and the prototypes and cams stages on the built-in data."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, run_stage, run_stages, write_params

from pipeline.cam.methods import compute_cams
from pipeline.cam.prototypes import (
    FeatureReservoir,
    attach_prototypes,
    cluster_centres,
    load_cam_model,
    prototype_weight,
    select_prototypes,
)
from pipeline.classifier.models import CamClassifier
from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.errors import InputError, MissingInputError
from pipeline.segment.unlabeled import seeds_for_folder


def test_reservoir_keeps_the_rows_with_the_largest_keys_of_the_whole_stream():
    rows = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 3)
    reservoir = FeatureReservoir(12, torch.Generator().manual_seed(3))
    for start, stop in ((0, 7), (7, 30), (30, 30), (30, 50)):
        reservoir.add("a", rows[start:stop])
    kept = reservoir.get("a")
    # the reference: one key per row in arrival order from the same generator, the 12 largest
    keys = torch.rand(50, generator=torch.Generator().manual_seed(3))
    expected = set(keys.topk(12).indices.tolist())
    assert kept.shape == (12, 3) and set(kept[:, 0].long().tolist()) == expected
    small = FeatureReservoir(100, torch.Generator().manual_seed(0))
    small.add("b", rows[:5])
    small.add("b", rows[5:9])
    assert sorted(small.get("b")[:, 0].tolist()) == list(range(9)) and small.get("c") is None


def test_cluster_centres_are_raw_means_of_groups_by_direction():
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(4)[:3] * torch.tensor([[1.0], [5.0], [0.2]])  # three directions, very different lengths
    rows, groups = [], []
    for j, d in enumerate(directions):
        for _ in range(20):
            scale = 0.5 + torch.rand(1, generator=g).item()
            rows.append(d * scale + 0.01 * torch.randn(4, generator=g) * d.norm())
            groups.append(j)
    rows = torch.stack(rows)
    centres = cluster_centres(rows, 3, seed=0)
    expected = torch.stack([rows[torch.tensor(groups) == j].mean(0) for j in range(3)])
    order = [int(np.argmax([F.cosine_similarity(c, e, dim=0) for e in expected])) for c in centres]
    assert sorted(order) == [0, 1, 2]
    assert torch.allclose(centres, expected[order], atol=1e-5)
    assert len(cluster_centres(rows[:2], 12)) == 2  # never more centres than rows


def test_select_prototypes_by_the_classifiers_softmax():
    head = torch.tensor([[4.0, 0.0], [0.0, 4.0], [1.0, 1.0]])  # 3 classes, 2 channels
    centres = torch.tensor([[2.0, 0.0], [0.6, 0.4], [0.0, 2.0]])
    context = torch.tensor([[0.5, 0.45], [0.0, 3.0], [1.0, 0.0]])
    prototypes, kept = select_prototypes(centres, context, head, 0, 0.9, 0.05)

    def prob(v):  # softmax over the classes of v . W, by hand
        e = [float(np.exp(sum(a * b for a, b in zip(v.tolist(), w.tolist())))) for w in head]
        return e[0] / sum(e)

    assert [prob(c) > 0.9 for c in centres] == [True, False, False]
    assert torch.equal(prototypes, centres[:1])
    assert torch.equal(kept, context[[i for i, c in enumerate(context) if 0.05 < prob(c) < 0.9]])
    # no centre passes: the class keeps its best one
    weak = torch.tensor([[0.1, 0.0], [0.0, 0.1]])
    fallback, _ = select_prototypes(weak, None, head, 0, 0.9, 0.05)
    assert torch.equal(fallback, weak[:1])


def test_lpcam_map_is_foreground_minus_context_cosine():
    g = torch.Generator().manual_seed(5)
    model = CamClassifier(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()), 4, 2).eval()
    prototypes = [torch.rand(3, 4, generator=g), torch.rand(2, 4, generator=g)]
    context = [torch.rand(2, 4, generator=g), torch.zeros(0, 4)]
    weight = torch.stack([prototype_weight(p, c, 4) for p, c in zip(prototypes, context)])
    images = torch.randn(1, 3, 5, 5, generator=g)
    with pytest.raises(ValueError, match="prototypes"):
        compute_cams(model, images, [[0, 1]], "lpcam")
    model.register_buffer("lpcam_weight", weight, persistent=False)
    maps = compute_cams(model, images, [[0, 1]], "lpcam", normalize=False)[0]
    with torch.no_grad():
        features = model.features(images)[0]
    for k in (0, 1):
        for y in range(5):
            for x in range(5):
                f = features[:, y, x]
                fg = np.mean([F.cosine_similarity(f, p, dim=0).item() for p in prototypes[k]])
                ctx = np.mean([F.cosine_similarity(f, c, dim=0).item() for c in context[k]]) if len(context[k]) else 0.0
                assert max(maps[k, y, x].item(), 0.0) == pytest.approx(max(fg - ctx, 0.0), abs=1e-5)


def test_prototypes_and_lpcam_seeds_through_the_stages(pipeline_run, tmp_path):
    for sub in ("data/prepared", "models"):
        shutil.copytree(pipeline_run / sub, tmp_path / sub, symlinks=True)
    params = {**TINY, "cam": {**TINY["cam"], "method": "lpcam", "lpcam_clusters": 3, "lpcam_max_pixels": 200}}
    write_params(tmp_path, params)
    result = run_stage(tmp_path, "cams")  # the session run's prototypes file says none were needed
    assert result.returncode != 0 and "holds no LPCAM prototypes" in result.stderr and "prototypes.pt" in result.stderr
    result = run_stages(tmp_path, "prototypes", "cams")
    assert result.returncode == 0, result.stderr[-3000:]
    data = load_checkpoint(tmp_path / "models/prototypes.pt", remedy="rerun")
    assert data["weight"].shape == (6, 512)
    rows = list(data["summary"].values())
    assert sum(row["fg_pixels"] > 0 for row in rows) >= 3
    # a class with foreground features has at least one prototype (its best centre if none passes); one without has none
    assert [len(p) >= 1 for p in data["prototypes"]] == [row["fg_pixels"] > 0 for row in rows]
    assert (tmp_path / "models/prototypes.pt").stat().st_size < 200_000
    seeds = list((tmp_path / "outputs/seeds").glob("*.npz"))
    assert len(seeds) == 24
    for path in seeds:
        with np.load(path) as f:
            assert np.isfinite(f["maps"]).all() and f["maps"].max() <= 1.0
    # pipeline.segment.unlabeled on a folder of images, with the same prototypes
    classifier = tmp_path / "models/classifier.pt"
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((tmp_path / "data/prepared").rglob("*.jpg"))[:3]:
        shutil.copyfile(path, images / path.name)
    found = seeds_for_folder(classifier, images, tmp_path / "unlabeled", method="lpcam", threshold=0.0, scales=(1.0,),
                             prototypes=tmp_path / "models/prototypes.pt", device="cpu")
    assert len(found) == 3 and len(list((tmp_path / "unlabeled/seeds").glob("*.npz"))) == 3
    # a prototypes file from another classifier is refused, naming it
    ckpt = load_checkpoint(classifier, remedy="rerun")
    ckpt["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    save_checkpoint(classifier, ckpt)
    with pytest.raises(InputError, match="prototypes.pt: made from another classifier"):
        load_cam_model(classifier, torch.device("cpu"), "lpcam", tmp_path / "models/prototypes.pt")
    model, _ = load_cam_model(classifier, torch.device("cpu"), "gradcam", tmp_path / "missing.pt")  # not read for other methods
    with pytest.raises(MissingInputError, match="missing.pt: LPCAM prototypes not found"):
        attach_prototypes(model, tmp_path / "missing.pt", classifier, ckpt["classes"])
