
import numpy as np
import pytest
from PIL import Image

from aoiflow import data


def _save(arr, path, mode=None):
    Image.fromarray(arr, mode=mode).save(path)
    return path


def test_reads_every_common_mode(tmp_path):
    grey = _save(np.full((5, 7), 128, np.uint8), tmp_path / "g.png")
    rgb = _save(np.dstack([np.full((5, 7), v, np.uint8) for v in (10, 200, 30)]), tmp_path / "c.jpg")
    rgba = _save(np.zeros((5, 7, 4), np.uint8), tmp_path / "a.png")
    deep = Image.fromarray(np.full((5, 7), 65535, np.uint16))
    deep.save(tmp_path / "d.png")
    pal = Image.fromarray(np.zeros((5, 7, 3), np.uint8)).convert("P")
    pal.save(tmp_path / "p.bmp")
    assert data.read_image(grey).shape == (5, 7, 1)
    assert abs(data.read_image(grey)[0, 0, 0] - 128 / 255) < 1e-6
    assert data.read_image(rgb).shape == (5, 7, 3)
    assert data.read_image(rgba).shape == (5, 7, 3)
    assert data.read_image(tmp_path / "d.png").max() == pytest.approx(1.0)
    assert data.read_image(tmp_path / "p.bmp").shape == (5, 7, 3)
    assert data.is_colour(data.read_image(rgb)) and not data.is_colour(data.read_image(grey))


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    (b"this is not an image", "not an image"),
    (None, "corrupt"),
])
def test_bad_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut in half
        _save(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(data.ImageReadError) as err:
        data.read_image(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(data.DataLayoutError, match="not found"):
        data.train_images(tmp_path / "nowhere")
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(data.DataLayoutError, match="no images"):
        data.train_images(tmp_path)
    with pytest.raises(data.DataLayoutError, match="test"):
        data.test_samples(tmp_path)


def test_load_images_skips_bad_ones(tmp_path):
    good = _save(np.zeros((40, 50), np.uint8), tmp_path / "ok.png")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 nonsense")
    with pytest.warns(UserWarning, match="broken.jpg"):
        loaded = data.load_images([good, bad], channels=1, size=32)
    assert loaded.images.shape == (1, 1, 32, 32)
    assert loaded.paths == [good] and loaded.skipped[0][0] == bad


def test_real_tile_layout_with_masks(tile_subset):
    samples = data.test_samples(tile_subset)
    assert sum(s.label == 0 for s in samples) == 4 and sum(s.label == 1 for s in samples) == 6
    assert all(s.mask_path is not None and s.mask_path.stem == s.path.stem for s in samples if s.label)
    mask = data.read_mask(samples[0 if samples[0].label else -1].mask_path)
    assert mask.dtype == bool and mask.any()
    # variable-size real images are resized to the model size, grey stays 1 channel
    loaded = data.load_images([s.path for s in samples], channels=1, size=64)
    assert loaded.images.shape == (10, 1, 64, 64)
    assert 0.0 <= float(loaded.images.min()) and float(loaded.images.max()) <= 1.0


def test_orphan_mask_is_reported(tile_subset):
    orphan = next((tile_subset / "ground_truth" / "crack").iterdir())
    (tile_subset / "test" / "crack" / f"{orphan.stem}.jpg").unlink()
    with pytest.warns(UserWarning, match="no matching test image"):
        data.test_samples(tile_subset)


def test_rgb_stored_grey_pcb_images_are_detected_as_grey(deeppcb_root):
    paths = data.list_images(deeppcb_root / "train" / "good")
    rgb_files = [p for p in paths[:200] if Image.open(p).mode == "RGB"]
    if not rgb_files:
        pytest.skip("no RGB-stored image among the first 200 DeepPCB training images")
    assert data.read_image(rgb_files[0]).shape[2] == 3
    assert data.detect_channels(rgb_files) == 1


def test_mask_resize_keeps_thin_lines_connected():
    from aoiflow.localisation import components

    mask = np.zeros((256, 256), bool)
    for x in range(20, 230):  # a 1-pixel diagonal crack
        mask[x // 2 + 40, x] = True
    small = data.resize_mask(mask, 64)
    assert small.shape == (64, 64) and len(components(small)) == 1
    tiny = np.zeros((40, 30), bool)
    tiny[10:20, 5:15] = True
    big = data.resize_mask(tiny, 64)
    assert big.shape == (64, 64) and big.any()


def test_to_channels_takes_a_two_dimensional_grey_array():
    from aoiflow.data import to_channels

    grey = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    assert to_channels(grey, 1).shape == (2, 3, 1) and np.array_equal(to_channels(grey, 1)[..., 0], grey)
    assert np.array_equal(to_channels(grey, 3), np.repeat(grey[..., None], 3, axis=2))
