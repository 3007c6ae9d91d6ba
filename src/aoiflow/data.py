"""Reading and validating images, masks and MVTec-layout folders.

Images become float tensors in [0, 1], shape (C, H, W), with C = 1 (grey) or 3 (colour).
Every failure names the file and the problem; folder loaders collect bad files instead of
stopping, so one bad image never kills a batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
NORMAL_LABEL = "good"


class ImageReadError(ValueError):
    """An image or mask file could not be used; ``str()`` names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataLayoutError(ValueError):
    """A data folder is missing or not in the expected layout."""


def _to_float_array(img: Image.Image, path: Path, sixteen_bit: bool = False) -> np.ndarray:
    """PIL image of any common mode -> float32 array (H, W, C) in [0, 1], C in {1, 3}.
    ``sixteen_bit``: the file was 16-bit (it may have been converted to mode 'I' to shrink it)."""
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or (sixteen_bit and mode == "I"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return arr[..., None]
    if mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(arr / scale, 0, 1)[..., None]
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        return np.clip(arr / (hi if hi > 1 else 1.0), 0, 1)[..., None]
    if mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255.0
    if mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    raise ImageReadError(path, f"unsupported image mode {mode!r}")


DEFAULT_MAX_PIXELS = 64_000_000
_max_pixels = DEFAULT_MAX_PIXELS
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def set_max_pixels(limit: int) -> None:
    """Refuse images with more than ``limit`` pixels (process-wide, like Pillow's own limit).

    A 12 KB PNG can hold 10000 x 10000 pixels; decoding it costs gigabytes, so the size in the
    header is checked before any pixel is decoded."""
    global _max_pixels
    if limit < 4:
        raise ValueError(f"the pixel limit must be at least 4, got {limit}")
    _max_pixels = int(limit)


def _open(path: Path) -> Image.Image:
    """Open (header only) and check the pixel count against the limit before decoding."""
    with warnings.catch_warnings():
        # Pillow warns between its limit and twice it; the check below is the one that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"refused: too many pixels to decode safely (a decompression bomb?): {exc}") from None
    w, h = img.size
    if w * h > _max_pixels:
        img.close()
        raise ImageReadError(path, f"refused: {w}x{h} = {w * h:,} pixels is over the limit of {_max_pixels:,} "
                                   f"(--max-pixels)")
    return img


def _reduction(img: Image.Image, size: int | None) -> int:
    """Integer shrink factor that still leaves at least 3x the model size on each side (Pillow's
    own reducing gap), so the final antialiased resize gives the same picture."""
    if size is None:
        return 1
    return max(1, min(img.size) // (3 * size))


def _decode(img: Image.Image, factor: int) -> tuple[Image.Image, bool]:
    """Decode, shrinking by ``factor`` on the way where that is cheap (JPEG draft, then a box
    filter). Returns the image and whether it was 16-bit before any conversion."""
    sixteen = img.mode in SIXTEEN_BIT_MODES
    if factor > 1:
        w, h = img.size
        if img.format == "JPEG":
            img.draft(img.mode, (w // factor, h // factor))  # decodes at 1/2, 1/4 or 1/8 scale
        img.load()
        if img.mode in ("1", "P") or sixteen:
            img = img.convert("L" if img.mode == "1" else "RGB" if img.mode == "P" else "I")
        target = (max(2, round(w / factor)), max(2, round(h / factor)))
        if img.size != target:  # box (area) filter to a size that keeps the geometry exact
            img = img.resize(target, Image.Resampling.BOX)
    img.load()
    return img, sixteen


def read_image_at(path: str | Path, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like ``read_image``; with ``size``, a large image is decoded reduced (still >= 3x ``size``
    on each side). Returns the array and the file's full (H, W)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with _open(path) as img:
            w, h = img.size
            decoded, sixteen = _decode(img, _reduction(img, size))
            arr = _to_float_array(decoded, path, sixteen)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file that can be decoded (PNG/JPEG/BMP/TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode this image (lower --max-pixels)") from None
    if h < 2 or w < 2:
        raise ImageReadError(path, f"image is too small ({w}x{h} pixels)")
    return arr, (h, w)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 (H, W, C) in [0, 1], C = 1 for grey and 3 for colour.

    Raises ImageReadError naming the file for missing, empty, non-image, truncated,
    zero-sized or over-limit (``set_max_pixels``) files.
    """
    return read_image_at(path)[0]


def is_colour(arr: np.ndarray, tol: float = 2.0 / 255.0) -> bool:
    """True when an (H, W, C) array carries real colour (an RGB file of a grey scene is grey)."""
    if arr.shape[2] == 1:
        return False
    return bool(np.abs(arr[..., 0] - arr[..., 1]).mean() > tol or np.abs(arr[..., 1] - arr[..., 2]).mean() > tol)


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Convert (H, W, C), or (H, W) grey, to the requested channel count (ITU-R 601 luma for
    colour -> grey)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == channels:
        return arr
    if channels == 1:
        luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        return luma[..., None].astype(np.float32)
    return np.repeat(arr, 3, axis=2)


def resize_tensor(x: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, H, W) to ``size`` with antialiasing when shrinking."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def load_tensor(path: str | Path, channels: int, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read one image as a model input: (C, size, size) float in [0, 1], plus original (H, W)."""
    arr, full_hw = read_image_at(path, size)  # predict.Inspector makes its inputs the same way
    return to_model_input(arr, channels, size), full_hw


def to_model_input(arr: np.ndarray, channels: int, size: int) -> torch.Tensor:
    """(H, W, C) float array in [0, 1] -> (channels, size, size) tensor: the one way images reach a model."""
    arr = to_channels(arr, channels)
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    return resize_tensor(t, size)[0]


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W): pixels > 127 (on an 8-bit scale) are defect."""
    arr = read_image(path)
    return arr.max(axis=2) > (127.0 / 255.0)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool (H, W) -> bool (size, size): a model pixel is defect when any source pixel under it is
    (max pooling), so thin cracks stay connected; masks smaller than ``size`` are enlarged with
    nearest neighbour."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    if mask.shape[0] >= size and mask.shape[1] >= size:
        out = F.adaptive_max_pool2d(t, size)
    else:
        out = F.interpolate(t, size=(size, size), mode="nearest")
    return out[0, 0].numpy() > 0.5


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted). Missing folder -> DataLayoutError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class Sample:
    """One test image: its label (0 normal, 1 anomalous), defect type and optional mask file."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None
    boxes_path: Path | None = None  # annotations_bbox/<type>/<stem>.txt, boxes "x1 y1 x2 y2 [type]"


@dataclass
class LoadedImages:
    """Images loaded into one tensor (N, C, S, S); files that failed are listed in ``skipped``."""

    images: torch.Tensor
    paths: list[Path]
    original_sizes: list[tuple[int, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def load_images(paths: list[Path], channels: int, size: int, progress: bool = False) -> LoadedImages:
    """Load many images; unreadable ones are skipped with a warning naming them."""
    from tqdm import tqdm

    tensors, ok, sizes, skipped = [], [], [], []
    for path in tqdm(paths, desc="loading", unit="img", disable=not progress, leave=False):
        try:
            t, hw = load_tensor(path, channels, size)
        except ImageReadError as exc:
            warnings.warn(f"skipped {exc}", stacklevel=2)
            skipped.append((path, exc.problem))
            continue
        tensors.append(t)
        ok.append(path)
        sizes.append(hw)
    images = torch.stack(tensors) if tensors else torch.empty(0, channels, size, size)
    return LoadedImages(images, ok, sizes, skipped)


def detect_channels(paths: list[Path], max_files: int = 32) -> int:
    """1 when the (first few readable) images are grey, 3 when any carries real colour."""
    for path in paths[:max_files]:
        try:
            if is_colour(read_image_at(path, 32)[0]):
                return 3
        except ImageReadError:
            continue
    return 1


def train_images(root: str | Path) -> list[Path]:
    """``ROOT/train/good`` images; clear errors when the folder is missing or empty."""
    folder = Path(root) / "train" / NORMAL_LABEL
    if not Path(root).is_dir():
        raise DataLayoutError(f"{root}: data folder not found")
    if not folder.is_dir():
        raise DataLayoutError(f"{folder}: missing; expected MVTec layout ROOT/train/good/*.png|jpg")
    paths = list_images(folder)
    if not paths:
        raise DataLayoutError(f"{folder}: contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}.png", f"{stem}_mask.png", f"{stem}.bmp", f"{stem}_mask.bmp"):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def test_samples(root: str | Path) -> list[Sample]:
    """All images under ``ROOT/test/<type>/`` with labels and masks from ``ROOT/ground_truth``.

    ``good`` is normal (label 0); every other folder is a defect type (label 1). Masks that have
    no matching test image are reported with a warning.
    """
    test_dir = Path(root) / "test"
    if not test_dir.is_dir():
        raise DataLayoutError(f"{test_dir}: missing; expected ROOT/test/good and ROOT/test/<defect>")
    samples: list[Sample] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        kind = type_dir.name
        gt_dir = Path(root) / "ground_truth" / kind
        box_dir = Path(root) / "annotations_bbox" / kind
        images = list_images(type_dir)
        for img in images:
            mask = _find_mask(gt_dir, img.stem) if kind != NORMAL_LABEL else None
            boxes = box_dir / f"{img.stem}.txt"
            samples.append(Sample(img, int(kind != NORMAL_LABEL), kind, mask, boxes if boxes.is_file() else None))
        _warn_orphan_masks(gt_dir, {p.stem for p in images})
    if not samples:
        raise DataLayoutError(f"{test_dir}: contains no images")
    return samples


def _warn_orphan_masks(gt_dir: Path, stems: set[str]) -> None:
    if not gt_dir.is_dir():
        return
    for mask in list_images(gt_dir):
        stem = mask.stem.removesuffix("_mask")
        if stem not in stems:
            warnings.warn(f"{mask}: mask has no matching test image; ignored", stacklevel=3)
