"""Picture collections: imagefolder:PATH and csv:FILE, read lazily at the model's geometry."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image

from advrank.data import load_dataset
from advrank.data.folders import split_queries
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError


def test_imagefolder_lists_classes_and_reads_at_geometry(image_folder):
    geometry = Geometry((3, 24, 16), 0.875, "bicubic")
    ds = load_dataset(f"imagefolder:{image_folder}", geometry=geometry)
    assert len(ds) == 60 and ds.class_names == ["circles", "squares", "stripes"]
    assert Counter(ds.labels.tolist()) == {0: 20, 1: 20, 2: 20}
    assert ds.item_name(0) == "circles/000.jpg" and ds.label_name(2) == "stripes"
    images = ds.get_images(torch.tensor([0, 59, 0]))
    assert images.shape == (3, 3, 24, 16) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(images[0], images[2])
    # the crop recipe: shorter side to floor(16 / 0.875) = 18, then the centre 24 x 16
    with Image.open(image_folder / "circles" / "000.jpg") as img:
        expected = geometry.transform(img.convert("RGB"))
    assert torch.allclose(images[0], expected)
    grey = load_dataset(f"imagefolder:{image_folder}", geometry=Geometry((1, 8, 8)))
    assert grey.get_images(torch.tensor([1])).shape == (1, 1, 8, 8)


def test_csv_listing_relative_and_string_labels(tmp_path, image_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["label,path,extra"]
    for i, src in enumerate(sorted(image_folder.glob("*/*.jpg"))[::6]):
        shutil.copy(src, flat / f"img{i}.jpg")
        rows.append(f"{src.parent.name},img{i}.jpg,x")
    (flat / "list.csv").write_text("\n".join(rows) + "\n\n")
    ds = load_dataset(f"csv:{flat / 'list.csv'}", geometry=Geometry((3, 16, 16)))
    assert len(ds) == 10 and ds.class_names == ["circles", "squares", "stripes"]
    assert ds.item_name(0) == "img0.jpg" and ds.label_name(int(ds.labels[0])) == "circles"
    assert ds.get_images(torch.arange(10)).shape == (10, 3, 16, 16)


@pytest.mark.parametrize("content, message", [
    ("path\nx.jpg\n", "first line must name the columns"),
    ("path,label\nx.jpg,\n", "expected a path and a label"),
])
def test_bad_csv_is_one_error(tmp_path, content, message):
    (tmp_path / "l.csv").write_text(content)
    with pytest.raises(AdvrankError, match=message):
        load_dataset(f"csv:{tmp_path / 'l.csv'}")


def test_empty_flat_and_lonely_folders_are_refused(tmp_path, image_folder):
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(AdvrankError, match="holds no images in class sub-folders"):
        load_dataset(f"imagefolder:{empty}")
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(image_folder / "circles" / "000.jpg", flat / "a.jpg")
    with pytest.raises(AdvrankError, match="no class sub-folders.*csv:FILE"):
        load_dataset(f"imagefolder:{flat}")
    with pytest.raises(AdvrankError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    lonely = tmp_path / "lonely"
    shutil.copytree(image_folder, lonely)
    for f in list((lonely / "squares").iterdir())[1:]:
        f.unlink()
    with pytest.raises(AdvrankError, match="class 'squares' has only one image"):
        load_dataset(f"imagefolder:{lonely}")


def test_fingerprint_follows_the_files(tmp_path, image_folder):
    root = tmp_path / "copy"
    shutil.copytree(image_folder, root)
    fp = load_dataset(f"imagefolder:{root}").fingerprint()
    assert load_dataset(f"imagefolder:{root}").fingerprint() == fp
    target = root / "circles" / "003.jpg"
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_dataset(f"imagefolder:{root}").fingerprint() != fp


def test_query_split_is_stratified_deterministic_and_name_keyed(image_folder):
    ds = load_dataset(f"imagefolder:{image_folder}", geometry=Geometry((3, 8, 8)))
    q, g = split_queries(ds, 0.25)
    assert len(q) == 15 and len(g) == 45
    assert sorted(torch.cat([q, g]).tolist()) == list(range(60))
    assert Counter(ds.labels[q].tolist()) == {0: 5, 1: 5, 2: 5}
    q2, _ = split_queries(ds, 0.25)
    assert torch.equal(q, q2)
    # the split is keyed by names, not positions: a reordered view splits the same files
    names = {ds.item_name(i) for i in q.tolist()}
    rev = ds.subset(torch.arange(59, -1, -1))
    qr, _ = split_queries(rev, 0.25)
    assert {rev.item_name(i) for i in qr.tolist()} == names
    with pytest.raises(AdvrankError, match="strictly between 0 and 1"):
        split_queries(ds, 1.0)


def test_pictures_are_read_upright_in_any_mode(tmp_path):
    """EXIF orientation is applied (a phone photo stored sideways), and grey, CMYK, RGBA and
    palette files all become the model's channels."""
    import numpy as np

    root = tmp_path / "modes"
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, :15] = 255  # left half white
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    img = Image.fromarray(wide)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(root / "a" / "rotated.jpg", exif=exif, quality=95)
    rgb = np.random.default_rng(0).integers(0, 255, (12, 12, 4), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(root / "a" / "grey.jpg")
    Image.fromarray(rgb, "CMYK").save(root / "b" / "cmyk.jpg")
    Image.fromarray(rgb, "RGBA").save(root / "b" / "alpha.png")
    Image.fromarray(rgb[..., 0]).convert("P").save(root / "b" / "palette.gif")
    for channels in (3, 1):
        ds = load_dataset(f"imagefolder:{root}", geometry=Geometry((channels, 30, 30)))
        x = ds.get_images(torch.arange(len(ds)))
        assert x.shape == (5, channels, 30, 30) and 0 <= x.min() and x.max() <= 1
    upright = load_dataset(f"imagefolder:{root}", geometry=Geometry((1, 30, 10)))
    first = upright.get_images(torch.tensor([upright.paths.index("a/rotated.jpg")]))[0, 0]
    # displayed upright the picture is 10 wide and 30 tall, its white half on top
    assert first[:12].mean() > 0.9 and first[-12:].mean() < 0.1
