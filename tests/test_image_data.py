"""Image-file readers: tar/folder access, decode + crop + resize, the decode cache, LFW and
image-folder layouts, and the clear errors for unsafe or broken input."""
import io
import os
import shutil
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from conftest import require_real
from vaelab.data import imagefiles
from vaelab.data.archive import is_tarball, iter_tar_files, read_files
from vaelab.data.folder import cache_dir, read_image_folder
from vaelab.data.imagefiles import center_crop_resize, decode, decode_images
from vaelab.data.lfw import is_lfw_name, read_lfw
from vaelab.errors import VaelabError

FAST = dict(workers=0, progress=False)

# person -> one solid colour per image; JPEG keeps a flat colour within a few levels
PEOPLE = {
    "Alice_Smith": [(200, 30, 30), (30, 200, 30), (30, 30, 200)],
    "Bob_Jones": [(220, 220, 40), (40, 220, 220)],
    "Carol_White": [(128, 128, 128)],
}


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _jpeg(color, size=(24, 20)) -> bytes:
    return _encode(Image.new("RGB", size, color), "JPEG")


def _png(a: np.ndarray) -> bytes:
    return _encode(Image.fromarray(a), "PNG")


def _tar(path, members: dict, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            if isinstance(data, tarfile.TarInfo):
                tf.addfile(data)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _lfw_members(top="lfw/"):
    m = {f"{top}{p}/{p}_{i + 1:04d}.jpg": _jpeg(c) for p, cs in PEOPLE.items() for i, c in enumerate(cs)}
    m[f"{top}README.txt"] = b"not part of the data"
    m[f"{top}Alice_Smith/notes.jpg"] = b"not named like a face, so never decoded"
    m["._lfw"] = b"macOS resource fork, hidden"
    return m


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))


def _cached_files():
    d = cache_dir()
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture
def lfw_tgz(tmp_path):
    return _tar(tmp_path / "lfw.tgz", _lfw_members())


# ------------------------------------------------------------------------------------ LFW

def test_lfw_tarball_identities_shapes_and_colours(lfw_tgz):
    raw = read_lfw(lfw_tgz, **FAST)
    assert raw.classes == ["Alice_Smith", "Bob_Jones", "Carol_White"]
    assert raw.y_train.tolist() == [0, 0, 0, 1, 1, 2]
    assert raw.x_train.shape == (6, 3, 20, 20) and raw.x_train.dtype == np.uint8  # 24x20 -> 20x20 crop
    assert raw.x_test is None and raw.source == str(lfw_tgz) and raw.from_cache is False
    colours = [c for cs in PEOPLE.values() for c in cs]
    np.testing.assert_allclose(raw.x_train.mean(axis=(2, 3)), colours, atol=6)
    assert read_lfw(lfw_tgz, image_size=8, **FAST).x_train.shape == (6, 3, 8, 8)


def test_lfw_min_faces_per_person(lfw_tgz):
    raw = read_lfw(lfw_tgz, min_faces_per_person=2, **FAST)
    assert raw.classes == ["Alice_Smith", "Bob_Jones"] and raw.y_train.tolist() == [0, 0, 0, 1, 1]
    assert read_lfw(lfw_tgz, min_faces_per_person=3, **FAST).classes == ["Alice_Smith"]
    with pytest.raises(VaelabError, match="--min-faces-per-person"):
        read_lfw(lfw_tgz, min_faces_per_person=4, **FAST)
    with pytest.raises(VaelabError, match="--min-faces-per-person"):
        read_lfw(lfw_tgz, min_faces_per_person=-1, **FAST)


def test_lfw_folder_equals_tarball(lfw_tgz, tmp_path):
    with tarfile.open(lfw_tgz) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    a = read_lfw(lfw_tgz, cache=False, **FAST)
    for folder in (tmp_path / "x", tmp_path / "x" / "lfw"):  # above or at the top folder
        b = read_lfw(folder, cache=False, **FAST)
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_train, b.y_train)
        assert a.classes == b.classes


def test_lfw_names():
    assert is_lfw_name("lfw/A_B/A_B_0001.jpg") and is_lfw_name("A_B/A_B_0012.JPG")
    assert not is_lfw_name("lfw/A_B/C_D_0001.jpg") and not is_lfw_name("lfw/A_B/A_B_1.jpg")


def test_lfw_two_top_folders_is_an_error(tmp_path):
    m = {**_lfw_members("lfw/"), **_lfw_members("lfw_funneled/")}
    with pytest.raises(VaelabError, match="more than one top folder"):
        read_lfw(_tar(tmp_path / "both.tgz", m), **FAST)


# ---------------------------------------------------------------------------- image folder

def _grey(v, shape=(12, 12)):
    return np.full(shape, v, np.uint8)


def _rgb(c, shape=(12, 12)):
    return np.broadcast_to(np.array(c, np.uint8), (*shape, 3)).copy()


def _write(root, files: dict):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_image_folder_class_subfolders_mixing_grey_and_rgb(tmp_path):
    root = _write(tmp_path / "d", {"dog/a.png": _png(_grey(77)), "cat/b.PNG": _png(_rgb((10, 20, 30))),
                                   "cat/sub/c.jpeg": _jpeg((200, 100, 50), (12, 12)), "notes.txt": b"x",
                                   ".hidden/z.png": b"skipped"})
    raw = read_image_folder(root, **FAST)
    assert raw.classes == ["cat", "dog"] and raw.y_train.tolist() == [0, 0, 1]
    assert raw.x_train.shape == (3, 3, 12, 12)
    assert (raw.x_train[0] == np.array([10, 20, 30])[:, None, None]).all()
    assert (raw.x_train[2] == 77).all()  # greyscale replicated into RGB
    one = read_image_folder(root, channels=1, **FAST).x_train
    assert one.shape == (3, 1, 12, 12) and (one[2] == 77).all()


def test_image_folder_unlabelled_greyscale_and_layout_errors(tmp_path):
    flat = _write(tmp_path / "flat", {f"{i}.png": _png(_grey(i * 40)) for i in range(3)})
    raw = read_image_folder(flat, image_size=4, **FAST)
    assert raw.classes == [] and raw.y_train.tolist() == [0, 0, 0]
    assert raw.x_train.shape == (3, 1, 4, 4) and raw.x_train[:, 0, 0, 0].tolist() == [0, 40, 80]

    mixed = _write(tmp_path / "mixed", {"a.png": _png(_grey(1)), "cls/b.png": _png(_grey(2))})
    with pytest.raises(VaelabError, match=r"mixes images at its top level \(a.png\).*\(cls/b.png\)"):
        read_image_folder(mixed, **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaelabError, match="empty holds no images"):
        read_image_folder(tmp_path / "empty", **FAST)
    sizes = _write(tmp_path / "sizes", {"a.png": _png(_grey(1, (8, 8))), "b.png": _png(_grey(2, (9, 9)))})
    with pytest.raises(VaelabError, match="b.png.*--image-size"):
        read_image_folder(sizes, **FAST)
    assert read_image_folder(sizes, image_size=8, **FAST).x_train.shape == (2, 1, 8, 8)
    with pytest.raises(VaelabError, match="does not exist"):
        read_image_folder(tmp_path / "nowhere", **FAST)


def test_image_folder_tarball_with_a_top_folder(tmp_path):
    tgz = _tar(tmp_path / "pets.tar", {"pets/cat/a.png": _png(_grey(5)), "pets/dog/b.png": _png(_grey(9))}, "w")
    raw = read_image_folder(tgz, **FAST)
    assert raw.classes == ["cat", "dog"] and raw.x_train[:, 0, 0, 0].tolist() == [5, 9]


def test_workers_give_the_same_result(tmp_path):
    rng = np.random.default_rng(0)
    root = _write(tmp_path / "r", {f"c{i % 2}/{i}.png": _png(rng.integers(0, 256, (10, 14, 3), np.uint8))
                                   for i in range(10)})
    a = read_image_folder(root, image_size=6, cache=False, **FAST)
    b = read_image_folder(root, image_size=6, cache=False, workers=2, progress=False)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)


# --------------------------------------------------------------------------- crop / resize

def _centre_quadrants(w, h):
    """A w x h image: background 0, the centred min(w,h) square split into 4 flat quadrants."""
    a = np.zeros((h, w, 3), np.uint8)
    s = min(w, h)
    x0, y0, q = (w - s) // 2, (h - s) // 2, s // 2
    for k, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        a[y0 + (k // 2) * q: y0 + (k // 2 + 1) * q, x0 + (k % 2) * q: x0 + (k % 2 + 1) * q] = c
    return a


@pytest.mark.parametrize("w,h", [(40, 20), (20, 40)])
def test_center_crop_resize(w, h):
    img = Image.fromarray(_centre_quadrants(w, h))
    square = _centre_quadrants(20, 20).transpose(2, 0, 1)  # [3, 20, 20]: only the centre survives
    np.testing.assert_array_equal(center_crop_resize(img, None, None), square)
    np.testing.assert_array_equal(center_crop_resize(img, None, 2), square[:, ::10, ::10])
    np.testing.assert_array_equal(center_crop_resize(img, None, 4), square[:, ::5, ::5])
    np.testing.assert_array_equal(center_crop_resize(img, 10, None), square[:, 5:15, 5:15])
    assert center_crop_resize(img, 10, 30).shape == (3, 30, 30)  # enlarging works too
    with pytest.raises(VaelabError, match=r"face.png is .* --crop of at most 20"):
        center_crop_resize(img, 21, None, "face.png")


def test_shrinking_is_the_block_mean():
    a = np.random.default_rng(1).integers(0, 256, (16, 16), np.uint8)
    got = center_crop_resize(Image.fromarray(a), None, 4)[0].astype(float)
    want = a.reshape(4, 4, 4, 4).mean(axis=(1, 3))
    assert np.abs(got - want).max() <= 1  # Pillow rounds between its two separable passes


def test_decode_modes():
    assert decode(_png(_grey(3)), "g.png").mode == "L"
    assert decode(_png(_grey(3)), "g.png", channels=3).mode == "RGB"
    rgba = _encode(Image.new("RGBA", (4, 4), (1, 2, 3, 4)), "PNG")
    assert decode(rgba, "a.png").mode == "RGB"
    deep = _encode(Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG")  # 16-bit greyscale
    assert decode(deep, "d.png").getpixel((0, 0)) == round(40000 * 255 / 65535)


# ------------------------------------------------------------------------------------ cache

def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = _write(tmp_path / "d", {"a/1.png": _png(_grey(10)), "b/2.png": _png(_grey(20))})
    lines = []
    first = read_image_folder(root, **FAST, log=lines.append)
    assert first.from_cache is False and len(_cached_files()) == 1

    def boom(*a, **k):
        raise AssertionError("decoded although cached")
    monkeypatch.setattr(imagefiles, "decode", boom)
    again = read_image_folder(root, **FAST, log=lines.append)
    assert again.from_cache is True and "from the cache" in lines[-1]
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert again.classes == first.classes and again.y_train.tolist() == first.y_train.tolist()

    # a changed file, an added file, another transform: each is a new key, so it decodes
    for change in (lambda: (root / "a/1.png").write_bytes(_png(_grey(11))),
                   lambda: (root / "b/3.png").write_bytes(_png(_grey(30)))):
        change()
        with pytest.raises(AssertionError, match="decoded although cached"):
            read_image_folder(root, **FAST)
    with pytest.raises(AssertionError, match="decoded although cached"):
        read_image_folder(root, image_size=6, **FAST)
    monkeypatch.undo()
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))

    # a corrupt cache file is ignored and rewritten
    shutil.rmtree(cache_dir())
    read_image_folder(root, **FAST)
    (path,) = [cache_dir() / n for n in _cached_files()]
    path.write_bytes(b"garbage")
    lines.clear()
    assert read_image_folder(root, **FAST, log=lines.append).from_cache is False
    assert any("ignoring the unreadable cache file" in line for line in lines)
    assert read_image_folder(root, **FAST).from_cache is True


def test_cache_of_a_tarball(lfw_tgz, monkeypatch):
    a = read_lfw(lfw_tgz, **FAST)
    monkeypatch.setattr(imagefiles, "decode", None)  # a TypeError if anything decodes
    b = read_lfw(lfw_tgz, **FAST)
    assert b.from_cache and b.classes == a.classes and b.y_train.tolist() == a.y_train.tolist()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    with pytest.raises(TypeError):  # another min-faces filter is another key
        read_lfw(lfw_tgz, min_faces_per_person=2, **FAST)


# ------------------------------------------------------------------------------- bad input

def _link(name, kind, target="/etc/passwd"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _fifo(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


GOOD = _lfw_members()
BAD_TARS = {
    "absolute": ({"/lfw/Ann/Ann_0001.jpg": _jpeg((1, 2, 3))}, "/lfw/Ann/Ann_0001.jpg.*absolute path"),
    "dotdot": ({"lfw/../Ann/Ann_0001.jpg": _jpeg((1, 2, 3))}, r"lfw/\.\./Ann/Ann_0001.jpg.*'\.\.'"),
    "symlink": ({"lfw/Ann/Ann_0001.jpg": _link("lfw/Ann/Ann_0001.jpg", tarfile.SYMTYPE)},
                "Ann_0001.jpg is a symbolic link"),
    "hardlink": ({"lfw/x": _link("lfw/x", tarfile.LNKTYPE, "lfw/README.txt")}, "lfw/x is a hard link"),
    "fifo": ({"lfw/pipe": _fifo("lfw/pipe")}, "lfw/pipe is a device or FIFO"),
    "not an image": ({"lfw/Ann/Ann_0001.jpg": b"this is text, not a JPEG"},
                     r"lfw/Ann/Ann_0001.jpg in .*bad.tgz does not decode as an image"),
}


@pytest.mark.parametrize("case", list(BAD_TARS))
def test_bad_tar_members(tmp_path, case):
    extra, pattern = BAD_TARS[case]
    tgz = _tar(tmp_path / "bad.tgz", {**GOOD, **extra})
    with pytest.raises(VaelabError, match=pattern) as e:
        read_lfw(tgz, **FAST)
    assert str(tgz) in str(e.value)
    assert _cached_files() == []  # nothing written


def test_truncated_and_foreign_files(lfw_tgz, tmp_path):
    data = lfw_tgz.read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VaelabError, match="cut.tgz is a truncated or corrupt tar archive"):
        read_lfw(cut, **FAST)
    # an uncompressed tar that ends right after a member: tarfile alone would not notice
    plain = _tar(tmp_path / "p.tar", {"a/1.png": _png(_grey(1)), "a/2.png": _png(_grey(2))}, "w")
    with tarfile.open(plain) as tf:
        second = tf.getmember("a/2.png").offset
    (tmp_path / "short.tar").write_bytes(plain.read_bytes()[:second])
    with pytest.raises(VaelabError, match="short.tar is a truncated"):
        read_image_folder(tmp_path / "short.tar", **FAST)
    text = tmp_path / "notes.tgz"
    text.write_text("hello")
    with pytest.raises(VaelabError, match="notes.tgz is not a readable tar archive"):
        read_image_folder(text, **FAST)
    assert is_tarball(lfw_tgz) and is_tarball(plain) and not is_tarball(text) and not is_tarball(tmp_path)
    assert _cached_files() == []


def test_crop_larger_than_an_image(tmp_path):
    root = _write(tmp_path / "d", {"big.png": _png(_grey(1, (30, 30))), "small.png": _png(_grey(1, (10, 30)))})
    with pytest.raises(VaelabError, match=r"small.png is 30x10 pixels.*--crop of at most 10"):
        read_image_folder(root, crop=16, **FAST)
    with pytest.raises(VaelabError, match="--crop must be a positive"):
        read_image_folder(root, crop=0, **FAST)
    assert _cached_files() == []


def test_folder_links(tmp_path):
    outside = _write(tmp_path / "outside", {"o.png": _png(_grey(1))})
    root = _write(tmp_path / "d", {"a/1.png": _png(_grey(2))})
    os.symlink(root / "a", root / "b")  # inside the folder: followed
    assert [n for n, _ in read_files(root)] == ["a/1.png", "b/1.png"]
    os.symlink(root, root / "a" / "up")  # a loop
    with pytest.raises(VaelabError, match="a/up is a symbolic link to a folder that holds it"):
        read_files(root)
    os.unlink(root / "a" / "up")
    os.symlink(outside / "o.png", root / "a" / "o.png")
    with pytest.raises(VaelabError, match=r"a/o.png is a symbolic link to .*outside"):
        read_image_folder(root, **FAST)
    assert _cached_files() == []


def test_iter_tar_files_accept(lfw_tgz):
    names = [n for n, _ in iter_tar_files(lfw_tgz, accept=lambda n: n.endswith(".txt"))]
    assert names == ["lfw/README.txt"]


def test_decode_images_keeps_order_and_names_bad_files():
    items = [(f"{i}.png", _png(_grey(i))) for i in range(5)]
    assert decode_images(items, **FAST)[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(VaelabError, match="3.png does not decode"):
        decode_images(items[:3] + [("3.png", b"junk")], workers=2, progress=False)
    half = _jpeg((9, 9, 9))
    with pytest.raises(VaelabError, match="cut.jpg does not decode as an image"):
        decode(half[: len(half) // 2], "cut.jpg")  # a truncated JPEG fails too, not just junk


# ------------------------------------------------------------------------------- real data

def test_real_lfw3d():
    path = require_real("lfw3d_90.tgz") / "lfw3d_90.tgz"
    t0 = time.perf_counter()
    raw = read_lfw(path, image_size=32, workers=2, progress=False)
    t1 = time.perf_counter()
    again = read_lfw(path, image_size=32, workers=2, progress=False)
    t2 = time.perf_counter()
    print(f"LFW3D 13,233 images at 32x32: first load {t1 - t0:.2f} s, cached {t2 - t1:.2f} s")
    assert raw.x_train.shape == (13233, 3, 32, 32) and len(raw.classes) == 5749
    assert not raw.from_cache and again.from_cache and t2 - t1 < t1 - t0
    assert int((raw.y_train == raw.classes.index("George_W_Bush")).sum()) == 530
    raw20 = read_lfw(path, min_faces_per_person=20, workers=2, progress=False)
    assert raw20.x_train.shape == (3023, 3, 90, 90) and len(raw20.classes) == 62
    assert np.bincount(raw20.y_train).min() == 20
