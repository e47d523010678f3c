"""LPCAM's local prototypes (Chen and Sun, CVPR 2023, "Extracting Class Activation Maps from
Non-Discriminative Features as well", https://arxiv.org/abs/2211.10757), built by the
``prototypes`` stage and read by the ``lpcam`` CAM method.

A classifier's linear head keeps only the features that tell classes apart, so a CAM lights
the most discriminative part of an object (a face, a wheel). LPCAM instead clusters each class's
features over the training images and compares every position with all the clusters:

1. For each training image and each of its classes, the classifier's last feature map at scale
   1 and the class's CAM (the ``cam`` settings' scales and flip, scaled to a maximum of 1, at the
   feature map's size): positions where the CAM exceeds ``cam.lpcam_threshold`` (0.1) are the
   class's *foreground* features, the others its *context* features. At most
   ``cam.lpcam_max_pixels`` of each per class are kept, a uniform sample of all of them drawn
   as they stream past (every candidate gets a random key; the largest keys stay), so memory
   stays bounded whatever the dataset's size.
2. k-means with ``cam.lpcam_clusters`` (12) clusters on each set, on the features' directions
   (the paper clusters by cosine distance; scikit-learn's k-means on L2-normalised features is
   that spherical k-means); each centre is the mean of its members' raw features.
3. The classifier scores the centres (``softmax(centre . W)`` over the classes, no bias, as the
   paper's code): foreground centres the class wins with more than ``lpcam_class_prob`` (0.9)
   are its prototypes, context centres whose class probability lies between
   ``lpcam_context_prob`` (0.05) and ``lpcam_class_prob`` are its context (things seen with the
   class that the classifier half-confuses with it: water for boats, rails for trains). A class
   none of whose foreground centres passes keeps its best one (the paper's code divides by zero
   there).
4. The map of class k at a position with features f is ``ReLU(mean_j cos(f, p_j) - mean_j
   cos(f, c_j))`` over its prototypes p and context c. Since a mean of cosines is a dot product
   with the mean of the unit vectors, this is a CAM on L2-normalised features with the weight
   ``mean_j p_j/|p_j| - mean_j c_j/|c_j|``, which is what this file stores (``weight``, one row per
   class) beside the prototypes themselves; scales and flips are summed as for any CAM (the paper
   sums the flipped features before the cosine, which differs only where the two disagree).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.cam.methods import multiscale_cams
from pipeline.cam.seeds import _collate, _Images
from pipeline.classifier.models import linear_head, load_classifier
from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.config import CamParams
from pipeline.core.errors import InputError, MissingInputError
from pipeline.core.paths import CLASSIFIER, PROTOTYPES
from pipeline.data.index import DatasetIndex

__all__ = ["PROTOTYPE_METHODS", "FeatureReservoir", "collect_features", "cluster_centres", "select_prototypes",
           "prototype_weight", "build_prototypes", "attach_prototypes", "load_cam_model"]

log = logging.getLogger("wsl")

PROTOTYPE_METHODS = ("lpcam",)  # CAM methods that read the prototypes stage's file
KMEANS_RESTARTS = 3  # k-means++ restarts per set (scikit-learn keeps the lowest inertia)


class FeatureReservoir:
    """A uniform random sample of at most ``capacity`` rows per key from rows that arrive in
    pieces: each row draws a key from ``generator`` and the ``capacity`` largest keys stay (a
    sample without replacement of everything seen, in memory of ``capacity`` rows)."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity, self.generator = capacity, generator
        self.rows: dict = {}
        self.keys: dict = {}

    def add(self, key, rows: torch.Tensor) -> None:
        if len(rows) == 0:
            return
        keys = torch.rand(len(rows), generator=self.generator).to(rows.device)
        if key in self.rows:
            rows, keys = torch.cat([self.rows[key], rows]), torch.cat([self.keys[key], keys])
        if len(rows) > self.capacity:
            keep = keys.topk(self.capacity).indices
            rows, keys = rows[keep], keys[keep]
        self.rows[key], self.keys[key] = rows, keys

    def get(self, key) -> torch.Tensor | None:
        return self.rows.get(key)


@torch.no_grad()
def collect_features(model: nn.Module, mean: Sequence[float], std: Sequence[float], index: DatasetIndex, ids: Sequence[str],
                     cam_p: CamParams, device: torch.device, *, seed: int = 0, progress: bool = True) -> tuple[FeatureReservoir, dict]:
    """Step 1: the foreground and context features of each class over ``ids`` (keys
    ``(class, "fg")`` and ``(class, "context")``), at most ``cam_p.lpcam_max_pixels`` of each,
    and how many of each there were in all (``{key: count}``)."""
    generator = torch.Generator().manual_seed(seed)
    reservoir = FeatureReservoir(cam_p.lpcam_max_pixels, generator)
    counts: dict = {}
    loader = DataLoader(_Images(index, ids, mean, std), batch_size=1, collate_fn=_collate, num_workers=cam_p.num_workers)
    for images, labels, _ in tqdm(loader, desc="prototype features", unit="img", disable=not progress):
        if len(labels[0]) == 0:
            continue
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        features = model.forward_features(images).float()[0]  # (D, h, w)
        (maps,) = multiscale_cams(model, images, [labels[0].to(device)], "gradcam", scales=cam_p.scales, flip=cam_p.flip,
                                  output_size=tuple(features.shape[-2:]))
        flat = features.flatten(1).T  # (h w, D)
        for row, class_id in enumerate(labels[0].tolist()):
            on = maps[row].flatten() > cam_p.lpcam_threshold
            off = maps[row].flatten() < cam_p.lpcam_threshold
            for kind, where in (("fg", on), ("context", off)):
                reservoir.add((class_id, kind), flat[where])
                counts[(class_id, kind)] = counts.get((class_id, kind), 0) + int(where.sum())
    return reservoir, counts


def cluster_centres(rows: torch.Tensor, clusters: int, seed: int = 0) -> torch.Tensor:
    """Step 2: spherical k-means on ``rows`` (scikit-learn on the L2-normalised rows); each
    centre is the mean of its members' raw rows. At most ``len(rows)`` centres."""
    from sklearn.cluster import KMeans  # here: every stage that reads the prototypes imports this module (1 s of sklearn)

    x = rows.detach().cpu().double().numpy()
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(clusters, len(x))
    assign = KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(unit)
    return torch.from_numpy(np.stack([x[assign == j].mean(axis=0) for j in range(k) if (assign == j).any()])).float()


def select_prototypes(centres: torch.Tensor | None, context: torch.Tensor | None, head_weight: torch.Tensor, class_id: int,
                      class_prob: float, context_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: the class's prototypes (foreground centres it wins with more than
    ``class_prob``; its best one when none does) and context (context centres with a
    probability between ``context_prob`` and ``class_prob``)."""
    dim = head_weight.shape[1]
    prototypes = torch.zeros(0, dim)
    if centres is not None and len(centres):
        prob = F.softmax(centres @ head_weight.T.float(), dim=1)[:, class_id]
        prototypes = centres[prob > class_prob] if (prob > class_prob).any() else centres[prob.argmax()][None]
    kept = torch.zeros(0, dim)
    if context is not None and len(context):
        prob = F.softmax(context @ head_weight.T.float(), dim=1)[:, class_id]
        kept = context[(prob > context_prob) & (prob < class_prob)]
    return prototypes, kept


def prototype_weight(prototypes: torch.Tensor, context: torch.Tensor, dim: int) -> torch.Tensor:
    """Step 4: ``mean_j p_j/|p_j| - mean_j c_j/|c_j|`` (a missing set counts as zero)."""
    weight = torch.zeros(dim)
    if len(prototypes):
        weight += F.normalize(prototypes, dim=1).mean(dim=0)
    if len(context):
        weight -= F.normalize(context, dim=1).mean(dim=0)
    return weight


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def build_prototypes(index: DatasetIndex, cam_p: CamParams, device: torch.device, *, classifier: Path = CLASSIFIER,
                     out: Path = PROTOTYPES, seed: int = 0, progress: bool = True) -> dict:
    """The ``prototypes`` stage's work: LPCAM's prototypes of every class over the training
    ids into ``out`` (a few MB), with the classifier's md5 so that a stale file is refused.
    Returns a summary (prototypes and context centres per class)."""
    model, ckpt = load_classifier(classifier, device)
    head = linear_head(model)
    if head is None:
        raise InputError(f"{classifier}: LPCAM needs a classifier with global average pooling and one linear head ({ckpt['backbone']})")
    model = model.to(memory_format=torch.channels_last)
    reservoir, counts = collect_features(model, ckpt["mean"], ckpt["std"], index, index.splits["train"], cam_p, device,
                                         seed=seed, progress=progress)
    w = head.weight.detach().float().cpu()
    classes = list(ckpt["classes"])
    foreground, context, weights, summary = [], [], [], {}
    for class_id, name in enumerate(classes):
        fg, ctx = reservoir.get((class_id, "fg")), reservoir.get((class_id, "context"))
        fg_centres = cluster_centres(fg, cam_p.lpcam_clusters, seed) if fg is not None else None
        ctx_centres = cluster_centres(ctx, cam_p.lpcam_clusters, seed) if ctx is not None else None
        p, c = select_prototypes(fg_centres, ctx_centres, w, class_id, cam_p.lpcam_class_prob, cam_p.lpcam_context_prob)
        foreground.append(p)
        context.append(c)
        weights.append(prototype_weight(p, c, w.shape[1]))
        summary[name] = {"prototypes": len(p), "context": len(c), "fg_pixels": counts.get((class_id, "fg"), 0),
                         "context_pixels": counts.get((class_id, "context"), 0)}
    save_checkpoint(out, {"method": "lpcam", "classes": classes, "classifier_md5": _md5(classifier), "weight": torch.stack(weights),
                          "prototypes": foreground, "context": context, "summary": summary})
    return summary


def attach_prototypes(model: nn.Module, path: Path, classifier: Path, classes: Sequence[str]) -> None:
    """Give ``model`` the ``lpcam_weight`` of the prototypes file at ``path``, refusing a file
    made for another classifier."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: LPCAM prototypes not found (run the prototypes stage with cam.method: lpcam)")
    data = load_checkpoint(path, remedy="rerun the prototypes stage (dvc repro -f prototypes)")
    if not isinstance(data, dict) or data.get("weight") is None:
        raise InputError(f"{path}: holds no LPCAM prototypes (made while cam.method was not lpcam); rerun the prototypes stage")
    if data["classifier_md5"] != _md5(classifier) or list(data["classes"]) != list(classes):
        raise InputError(f"{path}: made from another classifier than {classifier}; rerun the prototypes stage")
    model.register_buffer("lpcam_weight", data["weight"].to(next(model.parameters()).device), persistent=False)


def load_cam_model(classifier: Path, device: torch.device, method: str, prototypes: Path = PROTOTYPES) -> tuple[nn.Module, dict]:
    """:func:`~pipeline.classifier.models.load_classifier`, with LPCAM's prototypes attached
    when ``method`` reads them."""
    model, ckpt = load_classifier(classifier, device)
    if method in PROTOTYPE_METHODS:
        attach_prototypes(model, prototypes, classifier, ckpt["classes"])
    return model, ckpt
