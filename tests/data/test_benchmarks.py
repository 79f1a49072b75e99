"""``cub`` and ``cars`` on tiny generated trees in their published layouts (real JPEGs, a real
``cars_annos.mat`` written with scipy in the field layout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrank.data import Geometry, load_dataset
from advrank.errors import AdvrankError

# (class id, colour): two pictures each; ids on both sides of the class split
CUB_CLASSES = [(1, (200, 30, 30)), (2, (30, 200, 30)), (101, (30, 30, 200)),
               (200, (220, 220, 20))]
CARS_CLASSES = [(1, (200, 30, 30)), (98, (30, 200, 30)), (99, (30, 30, 200)),
                (196, (20, 220, 220))]


def _jpeg(path, colour, size=(60, 40)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)


def make_cub(root):
    """root/CUB_200_2011 with images.txt, image_class_labels.txt, classes.txt, images/."""
    base = root / "CUB_200_2011"
    images, labels, n = [], [], 0
    for cid, colour in CUB_CLASSES:
        for k in range(2):
            n += 1
            rel = f"{cid:03d}.Bird_{cid}/Bird_{cid}_{k:04d}.jpg"
            _jpeg(base / "images" / rel, colour)
            images.append(f"{n} {rel}\n")
            labels.append(f"{n} {cid}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    return root


def make_cars(root):
    """root/cars196 with cars_annos.mat (struct array annotations: relative_im_path, bbox_x1..
    bbox_y2, class, test; cell class_names) and car_ims/."""
    from scipy.io import savemat

    base = root / "cars196"
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    rows, n = [], 0
    for cid, colour in CARS_CLASSES:
        for k in range(2):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            _jpeg(base / rel, colour, size=(80, 50))
            rows.append((rel, np.array([[3]], np.uint8), np.array([[2]], np.uint8),
                         np.array([[70]], np.uint8), np.array([[45]], np.uint8),
                         np.array([[cid]], np.uint8), np.array([[k]], np.uint8)))
    annotations = np.array([rows], dtype=dtype)  # [1, N] like the published file
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Make Model {c}" for c in range(1, 197)]
    savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return root


@pytest.mark.parametrize("name,make,classes,half", [("cub", make_cub, CUB_CLASSES, 100),
                                                    ("cars", make_cars, CARS_CLASSES, 98)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_benchmark_splits_and_pixels(tmp_path, name, make, classes, half, split):
    root = make(tmp_path)
    ds = load_dataset(name, split, root=root)
    want = [(c, col) for c, col in classes if (c <= half) == (split == "train")]
    assert len(ds) == 2 * len(want) and ds.image_shape == (3, 224, 224)
    assert ds.labels.tolist() == [i for i in range(len(want)) for _ in range(2)]
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 224, 224)
        colour = torch.tensor(want[int(label)][1], dtype=torch.float32) / 255
        torch.testing.assert_close(image.mean((1, 2)), colour, atol=0.03, rtol=0)
    assert str(want[0][0]) in ds.class_names[0]


@pytest.mark.parametrize("name,make", [("cub", make_cub), ("cars", make_cars)])
def test_benchmark_reads_at_the_geometry(tmp_path, name, make):
    root = make(tmp_path / "x")
    # unpacked straight into the data root works too
    base = next((root).iterdir())
    ds = load_dataset(name, "test", root=base, geometry=Geometry((3, 16, 12)))
    assert ds.image_shape == (3, 16, 12) and ds[0][0].shape == (3, 16, 12)


@pytest.mark.parametrize("name,files", [("cub", ["images.txt", "image_class_labels.txt",
                                                 "CUB_200_2011"]),
                                        ("cars", ["cars_annos.mat", "car_ims", "cars196"])])
def test_benchmark_missing_files_named(tmp_path, name, files):
    with pytest.raises(AdvrankError) as err:
        load_dataset(name, "train", root=tmp_path)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in files)


def test_cars_bad_mat_refused(tmp_path):
    from scipy.io import savemat

    (tmp_path / "cars196").mkdir()
    savemat(tmp_path / "cars196" / "cars_annos.mat", {"something": np.zeros(3)})
    with pytest.raises(AdvrankError, match="annotations"):
        load_dataset("cars", "train", root=tmp_path)


def test_cub_bad_listing_refused(tmp_path):
    make_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(AdvrankError, match="different ids"):
        load_dataset("cub", "train", root=tmp_path)
