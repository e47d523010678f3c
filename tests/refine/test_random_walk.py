from fractions import Fraction

import pytest
import torch

from pipeline.refine.random_walk import (
    WALK_METHODS,
    background_plane,
    neighbor_weights,
    random_walk,
    transition_matrix,
    walk_labels,
    walked_labels,
)


def _segment(p, q):
    """Pixels of the segment p..q: max(|dy|,|dx|) + 1 points, exact fractions, halves up."""
    dy, dx = q[0] - p[0], q[1] - p[1]
    steps = max(abs(dy), abs(dx))
    rnd = lambda f: int((f + Fraction(1, 2)).__floor__())  # noqa: E731
    return [(p[0] + rnd(Fraction(k * dy, steps)), p[1] + rnd(Fraction(k * dx, steps))) for k in range(steps + 1)]


def _dense_transition(b, radius, beta):
    """T = D^-1 A with plain loops; the segment of an unordered pair starts at the pixel
    from which the other lies in the half-plane dy > 0 or (dy == 0, dx > 0)."""
    h, w = b.shape
    a = torch.zeros(h * w, h * w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for v in range(h):
                for u in range(w):
                    dy, dx = v - y, u - x
                    if (dy, dx) == (0, 0):
                        a[y * w + x, v * w + u] = 1.0
                    elif dy * dy + dx * dx < radius * radius:
                        p, q = ((y, x), (v, u)) if (dy > 0 or (dy == 0 and dx > 0)) else ((v, u), (y, x))
                        peak = max(float(b[s]) for s in _segment(p, q))
                        a[y * w + x, v * w + u] = (1.0 - peak) ** beta
    return a / a.sum(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def small_graph():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(7, 9, generator=g, dtype=torch.float64) ** 3  # mostly low, a few strong edges
    return b, _dense_transition(b, radius=3, beta=4.0)


def test_transition_matrix_matches_dense_reference(small_graph):
    b, dense = small_graph
    t = transition_matrix(b, radius=3, beta=4.0)
    assert t.layout == torch.sparse_csr and t.shape == (63, 63)
    torch.testing.assert_close(t.to_dense(), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.to_dense().sum(dim=1), torch.ones(63, dtype=torch.float64))
    # every in-image pair within the radius is stored (12 half-plane offsets, both ways, and the self-loop)
    pairs = sum(1 for y in range(7) for x in range(9) for v in range(7) for u in range(9) if (v - y) ** 2 + (u - x) ** 2 < 9)
    assert t.col_indices().numel() == pairs  # zero weights included: the structure does not depend on the map
    assert int((t.crow_indices()[1:] - t.crow_indices()[:-1]).max()) == 2 * 12 + 1


def test_neighbor_weights_are_the_rows_of_t(small_graph):
    b, dense = small_graph
    offsets, weights = neighbor_weights(b, radius=3, beta=4.0)
    h, w = b.shape
    assert weights.shape == (len(offsets), h, w) and offsets == sorted(offsets) and (0, 0) in offsets
    for m, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                want = float(dense[y * w + x, (y + dy) * w + x + dx]) if inside else 0.0
                assert float(weights[m, y, x]) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("method", WALK_METHODS)
def test_random_walk_matches_dense_matrix_power(small_graph, method):
    b, dense = small_graph
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 7, 9, generator=g, dtype=torch.float64)
    x = (maps * (1 - b)).reshape(2, -1)
    want = (torch.linalg.matrix_power(dense, 256) @ x.T).T.reshape(2, 7, 9)
    got = random_walk(maps, b, radius=3, beta=4.0, steps=256, method=method)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # float32, as the pipeline runs it
    got32 = random_walk(maps.float(), b.float(), radius=3, beta=4.0, steps=256, method=method)
    torch.testing.assert_close(got32, want.float(), rtol=1e-4, atol=1e-5)


def test_random_walk_methods_agree_at_default_radius():
    g = torch.Generator().manual_seed(2)
    b = torch.rand(20, 23, generator=g) ** 4
    maps = torch.rand(3, 20, 23, generator=g)
    s, t = (random_walk(maps, b, steps=64, method=m) for m in ("sparse", "stencil"))
    torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-6)


def test_random_walk_stays_inside_a_closed_boundary():
    h, w = 24, 24
    b = torch.zeros(h, w)
    b[4, 4:16] = b[15, 4:16] = b[4:16, 4] = b[4:16, 15] = 1.0  # a closed square wall
    maps = torch.zeros(1, h, w)
    maps[0, 6:8, 6:8] = 1.0  # a seed in one corner of the enclosed region
    walked = random_walk(maps, b)[0]
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[5:15, 5:15] = True
    assert float(walked[~inside].abs().max()) == 0.0  # no path crosses the wall
    assert float(walked[inside].min()) > 0.5 * float(walked[inside].max())  # spread over the whole region
    # the same seed without the wall leaks out: the check above can fail
    free = random_walk(maps, torch.zeros(h, w))[0]
    assert float(free[~inside].max()) > 0.1 * float(free.max())


def test_random_walk_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(2, 5, 6\)"):
        random_walk(torch.zeros(2, 5, 6), torch.zeros(5, 7))
    with pytest.raises(ValueError, match="valid methods"):
        random_walk(torch.zeros(2, 5, 6), torch.zeros(5, 6), method="dense")
    with pytest.raises(ValueError, match=r"\(1, 5, 6\)"):
        transition_matrix(torch.zeros(1, 5, 6))


def test_walk_labels_hand_made():
    walked = torch.tensor([[[0.2, 0.9, 4.0],
                            [0.0, 0.6, 0.3]],
                           [[0.1, 1.6, 0.2],
                            [0.5, 0.4, 0.9]]])
    # divided by the global max 4: class 6 -> [.05 .225 1; 0 .15 .075], class 2 -> [.025 .4 .05; .125 .1 .225]
    labels = walk_labels(walked, torch.tensor([6, 2]), (2, 3), bg_threshold=0.2)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[0, 3, 7], [0, 0, 3]]
    # planes constant in space stay constant when upsampled: 0.5 and 1 after scaling
    flat = torch.stack([torch.full((3, 4), 1.0), torch.full((3, 4), 2.0)])
    assert walk_labels(flat, torch.tensor([0, 1]), (11, 15)).unique().tolist() == [2]
    assert walk_labels(flat, torch.tensor([0, 1]), (11, 15), bg_threshold=1.0).unique().tolist() == [0]  # bg wins ties
    assert walk_labels(torch.zeros(2, 3, 4), torch.tensor([0, 1]), (6, 8)).unique().tolist() == [0]
    empty = walk_labels(torch.zeros(0, 3, 4), torch.zeros(0, dtype=torch.long), (6, 8))
    assert empty.shape == (6, 8) and empty.dtype == torch.uint8 and int(empty.max()) == 0


def test_background_plane_hand_made():
    maps = torch.tensor([[[0.5, 0.0], [1.0, 0.2]],
                         [[0.1, 0.3], [0.4, 0.9]]])
    # max over classes [.5 .3; 1 .9] -> (1 - max) ** 2 = [.25 .49; 0 .01]
    torch.testing.assert_close(background_plane(maps, 2.0), torch.tensor([[[0.25, 0.49], [0.0, 0.01]]]))
    torch.testing.assert_close(background_plane(maps, 1.0), torch.tensor([[[0.5, 0.7], [0.0, 0.1]]]))
    assert torch.equal(background_plane(torch.zeros(0, 2, 3), 4.0), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="power"):
        background_plane(maps, 0.0)


def test_walked_labels_hand_made():
    walked = torch.tensor([[[0.3, 0.3, 0.1]],   # background
                           [[0.2, 0.3, 0.5]],   # class 6
                           [[0.4, 0.1, 0.6]]])  # class 2
    labels = walked_labels(walked, torch.tensor([6, 2]), (1, 3))
    assert labels.dtype == torch.uint8 and labels.tolist() == [[3, 0, 3]]  # the tie at x = 1 goes to background
    with pytest.raises(ValueError, match="1 \\+ K"):
        walked_labels(walked[1:], torch.tensor([6, 2]), (1, 3))


def test_walked_background_matches_dense_reference(small_graph):
    """The walked background (PSA): background plane and seeds walked by T ** steps (the
    dense reference matrix), then argmax; on a map split by a wall of boundary, each side
    takes the label its seeds vote for."""
    b, dense = small_graph
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(2, 7, 9, generator=g, dtype=torch.float64) ** 2
    planes = torch.cat([background_plane(maps, 3.0), maps])
    steps = 6
    expected = (torch.linalg.matrix_power(dense, steps) @ (planes * (1 - b)).reshape(3, -1).T).T.reshape(3, 7, 9)
    walked = random_walk(planes, b, radius=3, beta=4.0, steps=steps)
    torch.testing.assert_close(walked, expected, rtol=1e-9, atol=1e-12)
    # a wall: two regions, class 0 seeded left, nothing right
    wall = torch.zeros(7, 9, dtype=torch.float64)
    wall[:, 4] = 1.0
    seeds = torch.zeros(1, 7, 9, dtype=torch.float64)
    seeds[0, 1:6, 0:4] = 0.9  # 20 of the 28 cells left of the wall: the region's mean votes for the class
    planes = torch.cat([background_plane(seeds, 2.0), seeds])
    labels = walked_labels(random_walk(planes, wall, radius=3, beta=10.0, steps=200), torch.tensor([4]), (7, 9))
    assert (labels[:, 5:] == 0).all()  # no class crosses the wall
    assert (labels[:, :4] == 5).all()  # also the unseeded rows 0 and 6 of that region


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", WALK_METHODS)
def test_cuda_matches_cpu(small_graph, method):
    b, dense = small_graph
    t = transition_matrix(b.cuda(), radius=3, beta=4.0)
    assert t.device.type == "cuda"
    torch.testing.assert_close(t.to_dense().cpu(), dense, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(2, 7, 9, generator=g)
    cpu = random_walk(maps, b.float(), radius=3, beta=4.0, method=method)
    gpu = random_walk(maps.cuda(), b.float().cuda(), radius=3, beta=4.0, method=method)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)
    labels = walk_labels(gpu, torch.tensor([3, 5]), (25, 33))
    assert labels.device.type == "cuda"
    assert torch.equal(labels.cpu(), walk_labels(cpu, torch.tensor([3, 5]), (25, 33)))


def test_oracle_boundary_marks_label_changes_and_void_cells():
    """benchmarks.walk_diagnostics.oracle_boundary on hand-made masks (cells of 4x4 pixels,
    labels read at each cell's centre pixel (2, 2))."""
    import numpy as np

    from benchmarks.walk_diagnostics import oracle_boundary

    mask = np.zeros((8, 12), np.uint8)
    mask[0:4, :] = 2  # top row of cells one class, bottom row background
    assert np.array_equal(oracle_boundary(mask, (2, 3)).numpy(), np.ones((2, 3), np.float32))
    mask[:] = 5
    assert not oracle_boundary(mask, (2, 3)).numpy().any()
    mask = np.zeros((12, 12), np.uint8)
    mask[4:8, 4:8] = 1  # the centre cell of 3x3: it and its 4 neighbours are edges, the corners not
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.float32)
    assert np.array_equal(oracle_boundary(mask, (3, 3)).numpy(), expected)
    mask[2, 2] = 255  # the centre pixel of the corner cell (0, 0): void is an edge too
    expected[0, 0] = 1
    assert np.array_equal(oracle_boundary(mask, (3, 3)).numpy(), expected)
