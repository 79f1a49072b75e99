"""A collection is a set of distinct pictures inside its root: aliases (links, duplicate CSV
rows), link loops, special files and paths that leave the root never change what is
measured; every PIL mode and bit depth is read at its true brightness; a collection that
cannot measure retrieval is one error."""

from __future__ import annotations

import io
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from advrank.core.distances import CosineDistance
from advrank.core.embedcache import embed_collection
from advrank.core.metrics import query_metrics
from advrank.data import load_dataset
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError

GEOMETRY = Geometry((3, 12, 12))


def figures(ds) -> dict[str, float]:
    """Recall@1/mAP of a fixed linear embedder over the collection: what a report shows."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 8))
    emb = embed_collection(net, ds, torch.device("cpu")).embeddings
    labels = ds.labels
    return query_metrics(emb, labels, emb, labels, CosineDistance(), (1,), torch.arange(len(ds)))


@pytest.fixture
def collections(tmp_path, image_folder):
    """The clean collection (3 classes x 4 pictures) and a polluted copy of it: a link loop,
    a link from one class folder into another's, a linked duplicate, a FIFO, a folder link
    and a file link leaving the root, and a CSV listing with repeated rows and paths that
    leave its folder."""
    clean = tmp_path / "clean"
    for cls in ("circles", "squares", "stripes"):
        (clean / cls).mkdir(parents=True)
        for f in sorted((image_folder / cls).iterdir())[:4]:
            shutil.copy(f, clean / cls / f.name)
    dirty = tmp_path / "dirty"
    shutil.copytree(clean, dirty)
    os.symlink("..", dirty / "circles" / "loop")                  # circles/loop -> root
    os.symlink("../squares", dirty / "circles" / "more")           # into another class
    os.symlink("000.jpg", dirty / "stripes" / "copy.jpg")         # the same picture twice
    os.mkfifo(dirty / "stripes" / "pipe.jpg")                      # would hang a reader
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(image_folder / "circles" / "010.jpg", outside / "secret.jpg")
    os.symlink(outside, dirty / "squares" / "elsewhere")          # a folder outside
    os.symlink(outside / "secret.jpg", dirty / "circles" / "s.jpg")  # a file outside
    rows = ["path,label"]
    for cls in ("circles", "squares", "stripes"):
        for f in sorted((clean / cls).iterdir()):
            rows += [f"{cls}/{f.name},{cls}", f"./{cls}/../{cls}/{f.name},{cls}"]
    rows += ["../outside/secret.jpg,circles", f"{outside / 'secret.jpg'},circles",
             "stripes/pipe.jpg,stripes"]
    (dirty / "list.csv").write_text("\n".join(rows) + "\n")
    return clean, dirty


def _alarm(seconds: int):
    def fail(*_):
        raise TimeoutError("reading the collection hung")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_aliases_loops_special_files_and_outside_paths_change_nothing(collections):
    clean, dirty = collections
    _alarm(60)
    try:
        ref = load_dataset(f"imagefolder:{clean}", geometry=GEOMETRY)
        for spec in (f"imagefolder:{dirty}", f"csv:{dirty / 'list.csv'}"):
            ds = load_dataset(spec, geometry=GEOMETRY)
            assert sorted(zip(ds.paths, ds.labels.tolist(), strict=True)) == \
                sorted(zip(ref.paths, ref.labels.tolist(), strict=True)), spec
            assert figures(ds) == figures(ref)
            assert ds.skipped.get("outside the root", 0) >= 1, ds.skipped
        folder = load_dataset(f"imagefolder:{dirty}", geometry=GEOMETRY)
        assert folder.skipped["links into another class"] == 1
        assert folder.skipped["folders reached again (link loops)"] >= 1
        assert folder.skipped["special files"] == 1 and folder.skipped["duplicates"] == 1
        listing = load_dataset(f"csv:{dirty / 'list.csv'}", geometry=GEOMETRY)
        assert listing.skipped["duplicates"] == 12 and listing.skipped["outside the root"] == 2
        assert listing.skipped["special files"] == 1
        # allowed outside: the outside picture is read once, under its first label
        wide = load_dataset(f"csv:{dirty / 'list.csv'}", geometry=GEOMETRY,
                            allow_outside_root=True)
        assert len(wide) == 13 and "../outside/secret.jpg" in wide.paths
    finally:
        signal.alarm(0)


def test_a_picture_under_two_labels_is_refused(collections):
    _, dirty = collections
    (dirty / "two.csv").write_text("path,label\ncircles/000.jpg,circles\ncircles/001.jpg,"
                                   "circles\nsquares/000.jpg,squares\n./circles/000.jpg,squares\n")
    with pytest.raises(AdvrankError, match="same picture under two labels"):
        load_dataset(f"csv:{dirty / 'two.csv'}")


def test_a_fifo_swapped_in_after_listing_is_unreadable_not_a_hang(collections):
    clean, _ = collections
    ds = load_dataset(f"imagefolder:{clean}", geometry=GEOMETRY)
    victim = clean / ds.paths[0]
    victim.unlink()
    os.mkfifo(victim)
    _alarm(20)
    try:
        image, error, sha = ds.read(0)
    finally:
        signal.alarm(0)
    assert image is None and sha is None and "not a plain file" in error


def test_non_utf8_file_names_are_read_and_shown(collections):
    clean, _ = collections
    raw = os.fsencode(clean / "circles") + b"/caf\xe9.jpg"
    shutil.copy(clean / "circles" / "000.jpg", raw)
    ds = load_dataset(f"imagefolder:{clean}", geometry=GEOMETRY)
    i = next(i for i in range(len(ds)) if "caf" in ds.item_name(i))
    assert ds.item_name(i) == "circles/caf\ufffd.jpg"
    assert ds.read(i)[0] is not None and len(ds.fingerprint()) == 64


@pytest.mark.parametrize("layout, message", [
    ({"only": 5}, "single class"),
    ({"a": 3, "b": 1}, "class 'b' has only one image"),
])
def test_collections_that_cannot_measure_retrieval_are_refused(tmp_path, image_folder, layout,
                                                               message):
    pictures = sorted(image_folder.glob("*/*.jpg"))
    for cls, n in layout.items():
        (tmp_path / cls).mkdir()
        for f in pictures[:n]:
            shutil.copy(f, tmp_path / cls / f.name)
    with pytest.raises(AdvrankError, match=message):
        load_dataset(f"imagefolder:{tmp_path}")


# ---------------------------------------------------------------- every mode and bit depth


def _grey(level: float, mode: str) -> Image.Image:
    """A 16 x 16 picture of brightness ``level`` in [0, 1] in PIL ``mode``."""
    if mode.startswith("I;16"):  # built from bytes: PIL's convert() to I;16B clips at 255
        order = ">" if mode == "I;16B" else "<"
        values = np.full((16, 16), round(level * 65535), f"{order}u2")
        return Image.frombytes(mode, (16, 16), values.tobytes())
    if mode == "I":
        return Image.fromarray(np.full((16, 16), round(level * 65535), np.int32), "I")
    if mode == "F":
        return Image.fromarray(np.full((16, 16), level, np.float32), "F")
    rgb = Image.new("RGB", (16, 16), (round(level * 255),) * 3)
    if mode == "LAB":
        from PIL import ImageCms

        to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"),
                                         ImageCms.createProfile("LAB"), "RGB", "LAB")
        return ImageCms.applyTransform(rgb, to_lab)
    if mode in ("La", "RGBa", "PA"):  # via their straight-alpha forms
        return rgb.convert({"La": "LA", "RGBa": "RGBA", "PA": "P"}[mode]).convert(mode)
    if mode == "P+transparency":
        img = rgb.convert("P")
        img.info["transparency"] = 255
        return img
    return rgb.convert(mode)


MODES = ["1", "L", "LA", "La", "P", "P+transparency", "PA", "RGB", "RGBA", "RGBa", "RGBX",
         "CMYK", "YCbCr", "HSV", "LAB", "I", "F", "I;16", "I;16B", "I;16L"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_is_read_at_its_brightness(mode, channels):
    level = 1.0 if mode == "1" else 0.3
    image = Geometry((channels, 8, 8)).read(_grey(level, mode))
    assert image.shape == (channels, 8, 8)
    assert abs(float(image.mean()) - level) < 0.02, (mode, float(image.mean()))


@pytest.mark.parametrize("fmt, mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "F"),
                                       ("TIFF", "I"), ("PNG", "LA"), ("TIFF", "CMYK"),
                                       ("TIFF", "LAB"), ("JPEG", "CMYK")])
def test_high_bit_depth_files_are_read_at_their_brightness(fmt, mode):
    buffer = io.BytesIO()
    _grey(0.3, mode).save(buffer, fmt)
    buffer.seek(0)
    with Image.open(buffer) as img:
        image = Geometry((3, 8, 8)).read(img)
    assert abs(float(image.mean()) - 0.3) < 0.03, (fmt, mode, float(image.mean()))


def test_a_class_folder_linked_to_another_is_an_alias(collections):
    clean, _ = collections
    os.symlink("circles", clean / "zircles")  # the same folder under a second class name
    ds = load_dataset(f"imagefolder:{clean}", geometry=GEOMETRY)
    assert len(ds) == 12 and ds.skipped == {"folders reached again (link loops)": 1}
    assert sorted(set(ds.labels.tolist())) == [0, 1, 2]
