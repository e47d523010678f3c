from fractions import Fraction

import pytest
import torch
from torch import nn

from pipeline.refine.affinity import (
    BoundaryNet,
    affinity_from_boundary,
    affinity_loss,
    affinity_targets,
    confident_labels,
    pair_offsets,
    pair_valid,
    path_max,
)

# ---------------------------------------------------------------- confident_labels

def test_confident_labels_hand_made():
    # fg: CRF under the high background plane (0.30); bg: under the low plane (0.05)
    fg = torch.tensor([[0, 0, 2, 2],
                       [0, 0, 2, 5],
                       [0, 0, 0, 0]], dtype=torch.uint8)
    bg = torch.tensor([[0, 2, 2, 2],
                       [0, 0, 2, 2],
                       [5, 0, 0, 2]], dtype=torch.uint8)
    want = torch.tensor([[0, 255, 2, 2],
                         [0, 0, 2, 5],      # a class of fg is kept even where bg disagrees
                         [255, 0, 0, 255]], dtype=torch.uint8)
    out = confident_labels(fg, bg)
    assert out.dtype == torch.uint8
    assert torch.equal(out, want)


def test_confident_labels_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        confident_labels(torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, 5, dtype=torch.uint8))


# ---------------------------------------------------------------- pair_offsets

@pytest.mark.parametrize("radius, count", [(2, 4), (3, 12), (5, 34), (10, 152)])
def test_pair_offsets_brute_force(radius, count):
    offsets = pair_offsets(radius)
    assert offsets.dtype == torch.long and offsets.shape == (count, 2)
    got = [tuple(o) for o in offsets.tolist()]
    assert got == sorted(got)  # by dy, then dx
    # every pixel offset shorter than the radius: exactly one of o and -o is listed
    box = range(-radius, radius + 1)
    short = {(dy, dx) for dy in box for dx in box if 0 < dy * dy + dx * dx < radius * radius}
    assert set(got) <= short
    for o in short:
        assert (o in got) != ((-o[0], -o[1]) in got)
    assert 2 * len(got) == len(short)


def test_pair_offsets_rejects_small_radius():
    with pytest.raises(ValueError, match="radius"):
        pair_offsets(1)


# ---------------------------------------------------------------- path_max

def _segment(dy, dx):
    """The slow, obviously-correct path: max(|dy|,|dx|) + 1 points, exact fractions,
    each coordinate rounded to the nearest integer with halves going up."""
    steps = max(abs(dy), abs(dx))

    def rnd(f):
        return int((f + Fraction(1, 2)).__floor__())

    return [(rnd(Fraction(k * dy, steps)), rnd(Fraction(k * dx, steps))) for k in range(steps + 1)]


def _path_max_reference(b, offsets):
    n, _, h, w = b.shape
    out = torch.empty(n, len(offsets), h, w, dtype=b.dtype)
    for i in range(n):
        for d, (dy, dx) in enumerate(offsets.tolist()):
            for y in range(h):
                for x in range(w):
                    if not (0 <= y + dy < h and 0 <= x + dx < w):
                        out[i, d, y, x] = 1.0
                        continue
                    out[i, d, y, x] = max(float(b[i, 0, y + sy, x + sx]) for sy, sx in _segment(dy, dx))
    return out


def test_path_max_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(2, 1, 7, 9, generator=g)
    offsets = pair_offsets(4)
    got = path_max(b, offsets)
    assert got.shape == (2, offsets.shape[0], 7, 9)
    torch.testing.assert_close(got, _path_max_reference(b, offsets), rtol=0, atol=0)
    torch.testing.assert_close(affinity_from_boundary(b, offsets), 1 - got)


def test_segment_rounding_hand_checked():
    # the reference's rounding on the offsets where a half occurs: (2, 1) -> k = 1 at (1, 0.5)
    assert _segment(2, 1) == [(0, 0), (1, 1), (2, 1)]
    assert _segment(2, -1) == [(0, 0), (1, 0), (2, -1)]  # -0.5 rounds up to 0
    assert _segment(1, 3) == [(0, 0), (0, 1), (1, 2), (1, 3)]  # 1/3 -> 0, 2/3 -> 1


def test_pair_valid_brute_force():
    offsets = pair_offsets(3)
    valid = pair_valid(4, 5, offsets)
    assert valid.shape == (offsets.shape[0], 4, 5) and valid.dtype == torch.bool
    for d, (dy, dx) in enumerate(offsets.tolist()):
        for y in range(4):
            for x in range(5):
                assert bool(valid[d, y, x]) == (0 <= y + dy < 4 and 0 <= x + dx < 5)


def test_path_max_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 5\)"):
        path_max(torch.zeros(2, 3, 5, 5), pair_offsets(3))
    with pytest.raises(ValueError, match="half-plane"):
        path_max(torch.zeros(1, 1, 5, 5), torch.tensor([[0, -1]]))


# ---------------------------------------------------------------- affinity_targets

def test_affinity_targets_brute_force():
    labels = torch.tensor([[0, 0, 3, 3, 255],
                           [0, 255, 3, 3, 1],
                           [0, 0, 0, 1, 1],
                           [255, 0, 1, 1, 1]], dtype=torch.uint8)
    offsets = pair_offsets(3)
    bg_pos, fg_pos, neg = affinity_targets(labels[None], offsets)
    h, w = labels.shape
    for _name, got in (("bg", bg_pos), ("fg", fg_pos), ("neg", neg)):
        assert got.shape == (1, offsets.shape[0], h, w) and got.dtype == torch.float32
    for d, (dy, dx) in enumerate(offsets.tolist()):
        for y in range(h):
            for x in range(w):
                a = int(labels[y, x])
                b = int(labels[y + dy, x + dx]) if 0 <= y + dy < h and 0 <= x + dx < w else None
                counted = b is not None and a != 255 and b != 255
                assert bg_pos[0, d, y, x] == float(counted and a == b == 0)
                assert fg_pos[0, d, y, x] == float(counted and a == b and a > 0)
                assert neg[0, d, y, x] == float(counted and a != b)
    assert float(bg_pos.sum()) > 0 and float(fg_pos.sum()) > 0 and float(neg.sum()) > 0  # all kinds occur


# ---------------------------------------------------------------- affinity_loss

def _square_scene(size=24, band=True):
    """Class 1 (value 2) in a square, a one-pixel ring of 255 around it when ``band``
    (IRN's unsure zone between confident foreground and background), background outside."""
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[6:18, 6:18] = 255 if band else 2
    labels[7:17, 7:17] = 2
    return labels[None]


def test_affinity_loss_finite_with_gradient():
    labels = _square_scene()
    logits = torch.zeros(1, 1, 24, 24, requires_grad=True)
    total, parts = affinity_loss(torch.sigmoid(logits), labels, pair_offsets(5))
    assert torch.isfinite(total) and set(parts) == {"bg_pos", "fg_pos", "neg"}
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_affinity_loss_prefers_boundary_on_label_edges():
    labels = _square_scene()
    offsets = pair_offsets(5)
    on_edge = (labels == 255).float()[:, None]  # 1 exactly on the band between the labels
    constant = torch.full_like(on_edge, 0.5)
    inside = torch.zeros_like(on_edge)
    inside[..., 11:13, :] = 1.0  # a wall through the object and the background instead
    loss_edge, parts = affinity_loss(on_edge, labels, offsets)
    loss_const, _ = affinity_loss(constant, labels, offsets)
    loss_inside, _ = affinity_loss(inside, labels, offsets)
    assert float(loss_const) == pytest.approx(-torch.log(torch.tensor(0.5 + 1e-5)).item(), rel=1e-4)  # every term -log(0.5)
    # every negative pair crosses the band; only background pairs that cut a corner of
    # the ring lose their affinity
    assert float(parts["neg"]) < 1e-4 and float(parts["fg_pos"]) < 1e-4
    assert float(loss_edge) < 0.1 * float(loss_const)
    assert float(loss_inside) > float(loss_const)


def test_affinity_loss_training_learns_the_band():
    torch.manual_seed(0)
    labels = _square_scene(size=20)
    offsets = pair_offsets(4)
    logits = torch.zeros(1, 1, 20, 20, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.2)
    first = None
    for _ in range(60):
        loss, _ = affinity_loss(torch.sigmoid(logits), labels, offsets)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    b = torch.sigmoid(logits.detach())[0, 0]
    band = labels[0] == 255
    assert float(loss.detach()) < 0.3 * first
    assert float(b[band].mean()) > 0.7 and float(b[~band].mean()) < 0.2


def test_affinity_loss_rejects_mismatched_labels():
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\).*\(1, 8, 9\)"):
        affinity_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 9, dtype=torch.long), pair_offsets(3))


# ---------------------------------------------------------------- BoundaryNet

class _TinyEncoder(nn.Module):
    """Levels at strides 2, 4, 8 and 16 with BatchNorm (whose running stats must not move)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
                                  for c in (8, 16, 32))

    def forward(self, x):
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(feats[-1]))
        return feats


def _net(**kwargs):
    torch.manual_seed(0)
    return BoundaryNet(_TinyEncoder(), channels=(8, 16, 32, 64), strides=(2, 4, 8, 16), width=8, **kwargs)


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (5, 3), (33, 31)])
def test_boundary_net_output_size(size):
    net = _net()
    x = torch.randn(2, 3, *size)
    want = (2, 1, -(-size[0] // 4), -(-size[1] // 4))
    with torch.no_grad():
        assert net(x).shape == want
        prob = net.boundary(x, flip=True)
    assert prob.shape == want and float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_boundary_net_flip_of_a_symmetric_image_equals_plain():
    # a mirror-symmetric image of width multiple of the padding: both copies see the same pixels
    net = _net().eval()
    half = torch.randn(1, 3, 32, 16)
    x = torch.cat([half, half.flip(-1)], dim=-1)
    with torch.no_grad():
        plain = net.boundary(x)
        flipped = net.boundary(x, flip=True)
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)


class _PoolEncoder(nn.Module):
    """Average pooling at strides 2, 4, 8: mirror-equivariant on a padded frame."""

    def forward(self, x):
        return [nn.functional.avg_pool2d(x, s) for s in (2, 4, 8)]


@pytest.mark.parametrize("width", [53, 64])
def test_boundary_net_flip_is_aligned(width):
    # with a mirror-equivariant encoder the flipped copy, flipped back, must land on the
    # same cells; flipping the unpadded image (IRN) would shift it by -W mod 8 pixels
    torch.manual_seed(0)
    net = BoundaryNet(_PoolEncoder(), channels=(3, 3, 3), strides=(2, 4, 8), width=8).eval()
    x = torch.randn(1, 3, 30, width)
    with torch.no_grad():
        torch.testing.assert_close(net.boundary(x, flip=True), net.boundary(x))
        naive = net.boundary(x.flip(-1)).flip(-1)  # the unpadded image flipped: aligned only when 8 divides W
        assert torch.allclose(naive, net.boundary(x)) == (width % 8 == 0)


def test_boundary_net_frozen_encoder():
    net = _net()
    stats = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    net.train()
    assert net.training and not net.encoder.training
    assert all(m.training for m in net.levels.modules())
    labels = torch.zeros(2, 8, 10, dtype=torch.long)
    labels[:, 2:6, 3:7] = 4
    loss, _ = affinity_loss(net.boundary(torch.randn(2, 3, 29, 40)), labels, pair_offsets(3))
    loss.backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.head_parameters())
    head = {id(p) for p in net.head_parameters()}
    assert not head & {id(p) for p in net.encoder.parameters()}
    assert head == {id(p) for p in net.parameters()} - {id(p) for p in net.encoder.parameters()}
    for k, v in net.encoder.state_dict().items():  # BatchNorm running statistics unchanged
        assert torch.equal(v, stats[k]), k
    net.eval()
    net.train(True)
    assert not net.encoder.training


def test_boundary_net_unfrozen_encoder_trains():
    net = _net(freeze_encoder=False)
    net.train()
    assert net.encoder.training
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


def test_boundary_net_rejects_wrong_encoder_levels():
    net = BoundaryNet(_TinyEncoder(), channels=(8, 16, 32), strides=(2, 4, 8), width=8)
    with pytest.raises(ValueError, match="returned 4 feature maps, expected 3"):
        net(torch.randn(1, 3, 16, 16))
    net = BoundaryNet(_TinyEncoder(), channels=(8, 16, 32, 64), strides=(2, 4, 8, 32), width=8)
    with pytest.raises(ValueError, match=r"level 3 \(stride 32\) gave \(1, 64, 2, 2\)"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        BoundaryNet(_TinyEncoder(), channels=(8,), strides=(2,), width=6)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    b = torch.rand(2, 1, 12, 15, generator=g)
    labels = _square_scene(size=12).expand(2, 12, 12)
    offsets = pair_offsets(4)
    torch.testing.assert_close(path_max(b.cuda(), offsets).cpu(), path_max(b, offsets), rtol=0, atol=0)
    logits = torch.zeros(2, 1, 12, 12, device="cuda", requires_grad=True)
    loss, _ = affinity_loss(torch.sigmoid(logits), labels.cuda(), offsets.cuda())
    loss.backward()
    want, _ = affinity_loss(torch.full((2, 1, 12, 12), 0.5), labels, offsets)
    torch.testing.assert_close(loss.detach().cpu(), want)
    net = _net()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        cpu = net.boundary(x, flip=True)
        gpu = net.cuda().boundary(x.cuda(), flip=True)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
