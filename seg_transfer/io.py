"""Reading images of any common mode into RGB uint8 tensors, writing outputs atomically, and the device."""
from __future__ import annotations

import io
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError, ConfigError, ImageTooLargeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 HxWx3 from any PIL mode; 16/32-bit greyscale is scaled, not clipped."""
    img = ImageOps.exif_transpose(img)  # photos from phones are stored sideways with an EXIF flag
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        grey = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(arr * 255.0 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    # Alpha is dropped, as torchvision's read_image(mode=RGB) does.
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as err:  # modes Pillow has no RGB conversion for
        raise BadInputError(f"cannot convert a {img.mode} image to RGB ({err})") from None


def open_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open and fully decode ``path``; any failure is one BadInputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path))


def decode_image(data: bytes, name: str = "upload", max_pixels: Optional[int] = None) -> Image.Image:
    """Bytes (an upload) -> a decoded image, failing as ``open_image`` does. ``max_pixels``: an image whose
    header declares more is refused before its pixels are decoded (a decompression bomb)."""
    if not data:
        raise BadInputError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Union[Path, io.BytesIO], name: str, max_pixels: Optional[int] = None) -> Image.Image:
    try:
        img = Image.open(source)  # reads the header only
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageTooLargeError(f"{name}: {img.width}x{img.height} pixels, more than the limit of {max_pixels}")
        img.load()  # decode now, so a truncated file fails here and not halfway through inference
    except UnidentifiedImageError:
        raise BadInputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, checked while opening
        raise ImageTooLargeError(f"{name}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadInputError(f"{name}: cannot decode image ({err})") from None
    return img


def read_image(image: ImageInput) -> torch.Tensor:
    """Path, PIL image, numpy array (HxW or HxWxC) or tensor (CxHxW) -> RGB uint8 tensor 3xHxW."""
    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as img:
            try:
                arr = _pil_to_rgb(img)
            except BadInputError as err:
                raise BadInputError(f"{image}: {err}") from None
    elif isinstance(image, Image.Image):
        arr = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        arr = _array_to_rgb(image)
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        arr = _array_to_rgb(t.numpy())
    else:
        raise BadInputError(f"cannot read an image from {type(image).__name__}")
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def image_name(image: ImageInput) -> str:
    """The stem of an image file, or ``'image'`` for in-memory images (the results' and outputs' name)."""
    return Path(image).stem if isinstance(image, (str, os.PathLike)) else "image"


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise BadInputError(f"image array of shape {arr.shape}: expected HxW, HxWx3 or HxWx4")
    if arr.dtype == np.uint16:
        arr = np.rint(arr.astype(np.float64) * (255.0 / 65535.0))
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0)  # float images are taken to be in [0, 1]
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def expand_inputs(paths: Iterable[Union[str, os.PathLike]]) -> tuple[list[Path], list[str]]:
    """The inference inputs named on a command line: files kept as given, folders expanded (recursively, sorted)
    into their image files; returns (files, errors for paths that do not exist and folders without images)."""
    files, errors = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                errors.append(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            errors.append(f"{p}: no such file or folder")
    return files, errors


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path``, created like open() does (mode 0o666 less the umask):
    mkstemp's 0600 would survive the rename and leave outputs unreadable to anyone else."""
    while True:
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_image(img: Image.Image, path: Union[str, os.PathLike]) -> Path:
    """Save a PIL image atomically (format from the suffix)."""
    with atomic_path(path) as tmp:
        img.save(tmp, format=Image.registered_extensions()[Path(path).suffix.lower()])
    return Path(path)


def save_text(text: str, path: Union[str, os.PathLike]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_bytes(data: bytes, path: Union[str, os.PathLike]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def resolve_device(device: Union[str, torch.device, None], key: str = "--device") -> torch.device:
    """``'cpu'``, ``'cuda'``, ``'cuda:1'`` or None (CUDA when available); a missing GPU is a clear error
    naming ``key`` (the flag or config key the device came from)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{key} {device}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} {device}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use {key} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key} {device}: MPS is not available on this machine; use {key} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key} {device}: unsupported; use cpu, cuda or cuda:N")
    return device
