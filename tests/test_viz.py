"""Transport-plan heatmaps (ram_ot.viz): the map of a label peaks where its mass is."""

import numpy as np
import pytest
import torch
from PIL import Image

from ram_ot import viz


def _plan_with_boxes(grid, boxes, rng):
    """(N, C) plan: label c's mass in its box (rows r0:r1, cols c0:c1), faint noise elsewhere."""
    h, w = grid
    plan = rng.random((h, w, len(boxes))) * 0.01
    for c, (r0, r1, c0, c1) in enumerate(boxes):
        plan[r0:r1, c0:c1, c] += 1.0 + rng.random((r1 - r0, c1 - c0))
    plan /= plan.sum()
    return torch.from_numpy(plan.reshape(h * w, len(boxes)))


@pytest.mark.parametrize("grid,size", [((7, 7), (112, 112)), ((4, 6), (90, 60))])
def test_heatmap_peaks_inside_the_box(grid, size):
    rng = np.random.default_rng(0)
    boxes = [(1, 3, 0, 2), (grid[0] - 2, grid[0], grid[1] - 3, grid[1])]
    plan = _plan_with_boxes(grid, boxes, rng)
    maps = viz.plan_heatmaps(plan, grid)
    assert maps.shape == (2, *grid) and maps.max() == pytest.approx(1.0)
    W, H = size
    for c, (r0, r1, c0, c1) in enumerate(boxes):
        up = viz.upsample(maps[c], size)
        assert up.shape == (H, W)
        y, x = np.unravel_index(np.argmax(up), up.shape)
        # the box in pixels: grid cell (r, q) covers rows r*H/h .. (r+1)*H/h
        assert r0 * H / grid[0] <= y < r1 * H / grid[0]
        assert c0 * W / grid[1] <= x < c1 * W / grid[1]
        inside = up[int(r0 * H / grid[0]) : int(r1 * H / grid[0]), int(c0 * W / grid[1]) : int(c1 * W / grid[1])]
        assert inside.mean() > 2 * up.mean()


def test_batched_and_bad_shapes():
    plan = torch.rand(3, 12, 5)
    assert viz.plan_heatmaps(plan, (3, 4)).shape == (3, 5, 3, 4)
    with pytest.raises(ValueError, match="N = H·W = 12"):
        viz.plan_heatmaps(torch.rand(13, 5), (3, 4))
    assert (viz.plan_heatmaps(torch.zeros(12, 2), (3, 4)) == 0).all()


def test_save_explanations_writes_overlays(tmp_path):
    rng = np.random.default_rng(1)
    plan = _plan_with_boxes((4, 4), [(0, 2, 0, 2), (2, 4, 2, 4)], rng)
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    paths = viz.save_explanations(image, plan, ["a cat", "dog/x"], tmp_path, grid=(4, 4), prefix="im 1")
    assert [p.name for p in paths] == ["im_1_a_cat.png", "im_1_dog_x.png"]
    first = np.asarray(Image.open(paths[0]))
    assert first.shape == (48, 64, 3)
    # the overlay is warm (red) where label 0's mass is and cold (blue) in the other corner
    assert first[5, 5, 0] > first[40, 60, 0] and first[40, 60, 2] > first[5, 5, 2]
    both = viz.save_explanations(image, plan, ["a", "b"], tmp_path, grid=(4, 4), prior=plan)
    assert Image.open(both[0]).size == (64 * 2 + 4, 48)
