"""seg_transfer.io: any image input -> RGB uint8 3xHxW, clear errors for bad files, atomic writes."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from seg_transfer.errors import BadInputError
from seg_transfer.io import IMAGE_EXTENSIONS, atomic_path, expand_inputs, read_image, save_image, save_text

from conftest import shared_image

ORIENTATION = 0x0112  # EXIF tag


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A small, non-square crop of a real photo (H=24, W=40), so transposes show in the shape."""
    with Image.open(shared_image("dog1.jpg")) as img:
        return np.array(img.convert("RGB").resize((40, 24)))


def as_chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)


def check_rgb(t: torch.Tensor, h: int, w: int) -> None:
    assert isinstance(t, torch.Tensor)
    assert t.dtype == torch.uint8
    assert tuple(t.shape) == (3, h, w)
    assert t.is_contiguous()


# ------------------------------------------------------------------------------------- inputs

def test_path_str_and_pathlike_give_the_photo():
    path = shared_image("dog1.jpg")
    with Image.open(path) as img:
        expected = as_chw(np.asarray(img.convert("RGB")))
    for src in (path, str(path)):
        t = read_image(src)
        check_rgb(t, 500, 500)
        assert torch.equal(t, expected)


def test_pil_rgb(rgb):
    t = read_image(Image.fromarray(rgb))
    check_rgb(t, 24, 40)
    assert torch.equal(t, as_chw(rgb))


def test_numpy_hwc_uint8(rgb):
    assert torch.equal(read_image(rgb), as_chw(rgb))
    assert torch.equal(read_image(rgb[..., :1]), as_chw(np.repeat(rgb[..., :1], 3, axis=2)))  # HxWx1


def test_numpy_read_only_array_is_accepted(rgb):
    frozen = rgb.copy()
    frozen.flags.writeable = False
    assert torch.equal(read_image(frozen), as_chw(rgb))


def test_numpy_hw_grey_is_repeated(rgb):
    grey = rgb[..., 0]
    t = read_image(grey)
    check_rgb(t, 24, 40)
    for c in range(3):
        assert torch.equal(t[c], torch.from_numpy(grey))


def test_numpy_hwc4_drops_alpha(rgb):
    rgba = np.concatenate([rgb, np.full((24, 40, 1), 7, np.uint8)], axis=2)
    assert torch.equal(read_image(rgba), as_chw(rgb))


def test_numpy_uint16_is_scaled_not_clipped():
    arr = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    t = read_image(arr)
    check_rgb(t, 1, 4)
    assert t[0, 0].tolist() == [0, 4, 128, 255]  # 1000 * 255/65535 = 3.9 (a clip would give 255)
    assert torch.equal(t[0], t[2])


def test_numpy_float_is_taken_in_0_1_and_clipped():
    arr = np.array([[0.0, 0.25, 1.0, 1.7, -0.3]], dtype=np.float32)
    t = read_image(arr)
    assert t[0, 0].tolist() == [0, 64, 255, 255, 0]
    assert torch.equal(read_image(arr.astype(np.float64)), t)


def test_tensor_chw(rgb):
    chw = as_chw(rgb)
    assert torch.equal(read_image(chw), chw)
    assert torch.equal(read_image(chw.float() / 255), chw)  # float CxHxW in [0, 1]
    assert torch.equal(read_image(torch.cat([chw, chw[:1]])), chw)  # 4 channels: alpha dropped
    grey = read_image(chw[:1])  # 1xHxW
    assert torch.equal(grey, chw[:1].expand(3, -1, -1))
    assert torch.equal(read_image(chw[0]), grey)  # HxW


def test_all_input_kinds_agree(rgb, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    ref = read_image(path)
    for src in (Image.open(path), rgb, as_chw(rgb), as_chw(rgb).float() / 255):
        assert torch.equal(read_image(src), ref)


@pytest.mark.parametrize("bad", [np.zeros((4, 5, 2), np.uint8), np.zeros((2, 3, 4, 5), np.uint8),
                                 np.zeros(7, np.uint8)], ids=["2ch", "4d", "1d"])
def test_bad_array_shape(bad):
    with pytest.raises(BadInputError, match=r"shape"):
        read_image(bad)


def test_unsupported_type():
    with pytest.raises(BadInputError, match="list"):
        read_image([[1, 2], [3, 4]])


# ---------------------------------------------------------------------------------- PIL modes

def test_grey_L(rgb, tmp_path):
    img = Image.fromarray(rgb).convert("L")
    img.save(tmp_path / "g.png")
    t = read_image(tmp_path / "g.png")
    check_rgb(t, 24, 40)
    grey = torch.from_numpy(np.array(img))
    assert all(torch.equal(t[c], grey) for c in range(3))


def test_rgba_drops_alpha(rgb, tmp_path):
    alpha = np.zeros((24, 40), np.uint8)  # fully transparent: colour must still come through
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), as_chw(rgb))


def test_palette_P(rgb, tmp_path):
    img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as back:
        assert back.mode == "P"
    t = read_image(tmp_path / "p.png")
    assert torch.equal(t, as_chw(np.asarray(img.convert("RGB"))))


def test_16bit_grey_png_is_scaled(tmp_path):
    arr = np.array([[0, 1000, 32768, 65535]] * 3, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")  # really stored and read as 16-bit
    t = read_image(tmp_path / "deep.png")
    check_rgb(t, 3, 4)
    assert t[:, 0].tolist() == [[0, 4, 128, 255]] * 3
    full = np.full((5, 6), 65535, np.uint16)
    Image.fromarray(full).save(tmp_path / "white.png")
    assert read_image(tmp_path / "white.png").eq(255).all()
    Image.fromarray(full // 2 + 1).save(tmp_path / "half.png")  # 32768
    assert read_image(tmp_path / "half.png").eq(128).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
        expected = as_chw(np.asarray(img.convert("RGB")))
    t = read_image(tmp_path / "cmyk.jpg")
    check_rgb(t, 10, 20)
    assert torch.equal(t, expected)
    r, g, b = t[:, 5, 10].tolist()
    assert r > 200 and g < 60 and b < 60


def test_exif_rotated_jpeg_is_transposed(rgb, tmp_path):
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 CW to display", as phones write portrait shots
    path = tmp_path / "phone.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    with Image.open(path) as img:
        assert img.size == (40, 24) and img.getexif()[ORIENTATION] == 6
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert upright.shape == (40, 24, 3)
    t = read_image(path)
    check_rgb(t, 40, 24)  # height and width swapped
    assert torch.equal(t, as_chw(upright))
    with Image.open(path) as img:
        assert torch.equal(read_image(img), t)  # an opened PIL image is transposed too


# -------------------------------------------------------------------------------- bad files

def _truncated_jpeg(tmp_path):
    data = shared_image("dog1.jpg").read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind,match", [
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "cannot decode"),
    ("missing", "no such file"),
])
def test_bad_files_name_the_path(kind, match, tmp_path):
    if kind == "empty":
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("this is not a JPEG\n" * 20)
    elif kind == "truncated":
        path = _truncated_jpeg(tmp_path)
    else:
        path = tmp_path / "nowhere.jpg"
    with pytest.raises(BadInputError, match=match) as info:
        read_image(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(BadInputError, match=str(tmp_path)):
        read_image(tmp_path)


# ----------------------------------------------------------------------------- expand_inputs

def test_expand_inputs_expands_folders_sorted(rgb, tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "C.JPG", "sub/d.png"):
        Image.fromarray(rgb).save(root / name, format="PNG" if name.endswith("png") else "JPEG")
    (root / "readme.txt").write_text("not an image")
    (root / "sub" / "notes.md").write_text("neither")
    single = tmp_path / "single.png"
    Image.fromarray(rgb).save(single)

    files, errors = expand_inputs([single, root])
    assert errors == []
    assert files[0] == single  # explicit files keep their place
    expanded = files[1:]
    assert expanded == sorted(expanded)
    assert {f.relative_to(root).as_posix() for f in expanded} == {"a.jpg", "b.png", "C.JPG", "sub/d.png"}
    assert all(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)


def test_expand_inputs_reports_missing_and_empty(tmp_path, rgb):
    good = tmp_path / "good.png"
    Image.fromarray(rgb).save(good)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    missing = tmp_path / "missing.jpg"
    files, errors = expand_inputs([str(missing), good, empty])
    assert files == [good]
    assert len(errors) == 2
    assert str(missing) in errors[0] and "no such file" in errors[0]
    assert str(empty) in errors[1] and "no images" in errors[1]


def test_expand_inputs_keeps_explicit_non_image_files(tmp_path):
    # An explicitly named file is passed on (and fails later with a message naming it).
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert expand_inputs([notes]) == ([notes], [])


# --------------------------------------------------------------------------- atomic writing

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_image_writes_and_leaves_no_temp(rgb, tmp_path):
    out = tmp_path / "deep" / "er" / "x.png"  # parents are created
    assert save_image(Image.fromarray(rgb), out) == out
    assert os.listdir(out.parent) == ["x.png"]
    with Image.open(out) as back:
        assert np.array_equal(np.asarray(back), rgb)
    # Written like any file (0o666 less the umask), not with a temp file's private 0600.
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def test_save_image_replaces_existing(rgb, tmp_path):
    out = tmp_path / "x.jpg"
    out.write_bytes(b"old")
    save_image(Image.fromarray(rgb), out)
    with Image.open(out) as back:
        assert back.format == "JPEG" and back.size == (40, 24)
    assert os.listdir(tmp_path) == ["x.jpg"]


def test_save_text(tmp_path):
    out = save_text("hello\n", tmp_path / "r.json")
    assert out.read_text() == "hello\n"
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_path_exception_leaves_old_file_and_no_temp(tmp_path):
    out = tmp_path / "result.png"
    out.write_bytes(b"precious")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(out) as tmp:
            assert tmp.parent == tmp_path and tmp != out
            tmp.write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["result.png"]


def test_atomic_path_exception_without_previous_file(tmp_path):
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise KeyError("x")
    assert os.listdir(tmp_path) == []


def test_save_image_failure_keeps_existing_file(rgb, tmp_path):
    out = tmp_path / "keep.jpg"
    out.write_bytes(b"precious")
    rgba = Image.fromarray(np.dstack([rgb, rgb[..., 0]]), mode="RGBA")
    with pytest.raises(OSError):  # JPEG cannot hold RGBA: the encoder fails inside the block
        save_image(rgba, out)
    assert out.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["keep.jpg"]


def test_mode_without_rgb_conversion_is_bad_input():
    """Pillow has no RGB conversion for 'La': one BadInputError naming the mode, not a ValueError."""
    with pytest.raises(BadInputError, match="cannot convert a La image to RGB"):
        read_image(Image.new("La", (4, 4)))
