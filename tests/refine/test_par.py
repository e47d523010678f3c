import math

import pytest
import torch

from pipeline.refine.par import dilated_neighbors, neighbor_offsets, par_affinity, par_labels, par_refine


def test_dilated_neighbors_match_slow_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 7, generator=g)
    dilations = (1, 3, 8)  # 8 reaches past the image: replicate padding clamps
    nb = dilated_neighbors(x, dilations)
    assert nb.shape == (2, 3, 24, 6, 7)
    unit = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for y, xx in [(2, 3), (0, 0), (5, 6), (1, 6)]:
        m = 0
        for d in dilations:
            for uy, ux in unit:
                v = min(max(y + d * uy, 0), 5)
                u = min(max(xx + d * ux, 0), 6)
                torch.testing.assert_close(nb[:, :, m, y, xx], x[:, :, v, u], rtol=0, atol=0)
                m += 1
    assert neighbor_offsets((2,)) == [(-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2)]


def test_par_affinity_one_pixel_by_hand():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 9, 9, generator=g) * 255
    dilations, w_color, w_pos = (1, 2), 0.3, 0.01
    aff = par_affinity(img, dilations, w_color, w_pos)
    assert aff.shape == (1, 16, 9, 9)
    torch.testing.assert_close(aff.sum(dim=1), torch.ones(1, 9, 9))
    # pixel (4, 4): every neighbour is inside; the formula written out with loops
    y, x = 4, 4
    offs = neighbor_offsets(dilations)
    colours = [img[0, :, y + dy, x + dx] for dy, dx in offs]
    colour_aff = []
    for n in range(len(offs)):
        terms = []
        for c in range(3):
            vals = [float(col[c]) for col in colours]
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            terms.append(-(abs(vals[n] - float(img[0, c, y, x])) / (std + 1e-8) / w_color) ** 2)
        colour_aff.append(sum(terms) / 3)
    dist = [math.hypot(dy, dx) for dy, dx in offs]
    mean = sum(dist) / len(dist)
    dstd = math.sqrt(sum((v - mean) ** 2 for v in dist) / (len(dist) - 1))
    pos_aff = [-(v / (dstd + 1e-8) / w_color) ** 2 for v in dist]

    def softmax(v):
        e = [math.exp(t - max(v)) for t in v]
        return [t / sum(e) for t in e]

    want = [(a + w_pos * b) / (1 + w_pos) for a, b in zip(softmax(colour_aff), softmax(pos_aff))]
    torch.testing.assert_close(aff[0, :, y, x], torch.tensor(want), rtol=1e-4, atol=1e-6)


def test_constant_image_keeps_constant_maps():
    img = torch.empty(1, 3, 20, 24)
    img[:, 0], img[:, 1], img[:, 2] = 120.0, 30.0, 200.0
    maps = torch.tensor([0.2, 0.7, 1.0]).view(1, 3, 1, 1).expand(1, 3, 20, 24).contiguous()
    torch.testing.assert_close(par_refine(img, maps), maps)


def test_constant_image_keeps_two_half_labels():
    """On a constant image every pixel has the same weights, symmetric in +-offset, and
    replicate padding mirrors too, so a left/right split of an even width stays a
    function of x alone, non-increasing in x and antisymmetric about the middle
    (``A(W - 1 - x) = 1 - A(x)``): each half keeps its label. Smaller blocks would not
    survive: dilations up to 24 average over most of the image (a 4-pixel stripe or a
    corner square is washed out), so the halves are the blocky map whose labels PAR
    must keep."""
    img = torch.full((1, 3, 16, 32), 100.0)
    left = torch.zeros(16, 32)
    left[:, :16] = 1.0
    maps = torch.stack([left, 1 - left])[None]
    out = par_refine(img, maps)
    assert torch.equal(out.argmax(dim=1), maps.argmax(dim=1))
    torch.testing.assert_close(out[0, 0], 1 - out[0, 0].flip(-1))  # the antisymmetry the argument uses
    assert float(out[0, 0, :, 15].min()) > 0.5  # the column next to the split


def _step_scene():
    """A colour step at column 32 of a 32x64 image and a seed blurred across it whose
    0.5 level sits 6 pixels inside the bright side."""
    g = torch.Generator().manual_seed(0)
    img = torch.empty(32, 64, 3)
    img[:, :32] = torch.tensor([40.0, 60.0, 50.0])
    img[:, 32:] = torch.tensor([210.0, 190.0, 170.0])
    img = (img + 3 * torch.randn(32, 64, 3, generator=g)).clamp(0, 255).round().to(torch.uint8)
    seed = torch.sigmoid((37.5 - torch.arange(64.0)) / 3).expand(32, 64)  # > 0.5 on columns 0..37
    dark = (torch.arange(64) < 32).expand(32, 64)
    return img, seed, dark


def test_step_edge_moves_the_label_boundary_onto_the_colour_edge():
    img, seed, dark = _step_scene()
    maps = torch.stack([seed, 1 - seed])[None]
    refined = par_refine(img.permute(2, 0, 1)[None].float(), maps)
    before = float(((maps[0].argmax(0) == 0) == dark).float().mean())
    after = float(((refined[0].argmax(0) == 0) == dark).float().mean())
    assert before == pytest.approx(1 - 6 / 64)
    assert after > 0.99 and after > before
    # the seed is made sharper: the step across the edge grows
    jump = lambda m: float((m[0, 0, :, 31] - m[0, 0, :, 32]).mean())  # noqa: E731
    assert jump(refined) > 2 * jump(maps)


@pytest.mark.parametrize("downscale", [1, 2])
def test_par_labels_on_the_step_edge(downscale):
    img, seed, dark = _step_scene()
    labels = par_labels(img, seed[None], torch.tensor([4]), bg=0.5, downscale=downscale)
    assert labels.shape == (32, 64) and labels.dtype == torch.uint8
    assert set(labels.unique().tolist()) <= {0, 5}
    assert float(((labels == 5) == dark).float().mean()) > 0.97
    # numpy image and maps of another size work too
    small = seed[::4, ::4][None]
    labels2 = par_labels(img.numpy(), small, [4], bg=0.5, downscale=downscale, iterations=5)
    assert labels2.shape == (32, 64)


def test_par_labels_edge_cases():
    img = torch.zeros(8, 10, 3, dtype=torch.uint8)
    empty = par_labels(img, torch.zeros(0, 2, 3), torch.zeros(0, dtype=torch.long), bg=0.3)
    assert empty.shape == (8, 10) and int(empty.max()) == 0
    assert par_labels(img, torch.full((1, 2, 3), 0.3), [2], bg=0.3).unique().tolist() == [0]  # bg wins ties
    with pytest.raises(ValueError, match=r"\(8, 10\) torch.uint8"):
        par_labels(img[..., 0], torch.zeros(1, 2, 3), [2], bg=0.3)
    with pytest.raises(ValueError, match=r"K = 2 class ids, got \(1, 2, 3\)"):
        par_labels(img, torch.zeros(1, 2, 3), [2, 3], bg=0.3)
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 10\)"):
        par_affinity(torch.zeros(1, 1, 8, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    img, seed, dark = _step_scene()
    maps = torch.stack([seed, 1 - seed])[None]
    x = img.permute(2, 0, 1)[None].float()
    cpu = par_refine(x, maps)
    gpu = par_refine(x.cuda(), maps.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    labels = par_labels(img.numpy(), seed[None].cuda(), [4], bg=0.5, downscale=2)
    assert labels.device.type == "cuda"
    assert torch.equal(labels.cpu(), par_labels(img, seed[None], [4], bg=0.5, downscale=2))
