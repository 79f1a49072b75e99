"""Dataset loaders: digits (embedded), MNIST / Fashion-MNIST (shared data root), SOP (replica)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrank.data import dataset_names, dataset_spec, load_dataset
from advrank.errors import AdvrankError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_LIKE = {"mnist": "MNIST", "fashion": "FashionMNIST"}
SIZES = {"train": 60_000, "test": 10_000}


def _check_images(ds, shape):
    images = ds.get_images(torch.arange(len(ds)))
    assert images.shape == (len(ds), *shape)
    assert images.dtype == torch.float32
    assert images.min().item() >= 0.0 and images.max().item() <= 1.0
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)
    return images


def test_registry_lists_all_datasets():
    assert set(dataset_names()) >= {"digits", "mnist", "fashion", "sop"}
    assert dataset_spec("mnist").image_shape == (1, 28, 28)
    assert dataset_spec("sop").image_shape == (3, 224, 224)
    assert len(dataset_spec("sop").mean) == 3


def test_unknown_dataset_and_split():
    with pytest.raises(AdvrankError, match="unknown dataset 'cifar'.*digits"):
        load_dataset("cifar", "test")
    with pytest.raises(AdvrankError, match="unknown split"):
        load_dataset("digits", "validation")


# --------------------------------------------------------------------------------- digits


def test_digits_shapes_range_labels():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1078, 719)
    for ds in (train, test):
        images = _check_images(ds, (1, 8, 8))
        assert images.max().item() == 1.0  # 16/16: scaled to the full [0, 1] range
        assert ds.image_shape == (1, 8, 8)
        assert sorted(ds.labels.unique().tolist()) == list(range(10))  # stratified split
        idx = torch.tensor([3, 0, 3])
        assert torch.equal(ds.get_images(idx), torch.stack([ds[3][0], ds[0][0], ds[3][0]]))


def test_digits_split_fixed_and_a_partition():
    from sklearn.datasets import load_digits

    a_train, a_test = load_dataset("digits", "train"), load_dataset("digits", "test")
    b_train = load_dataset("digits", "train")
    assert torch.equal(a_train.images, b_train.images)
    assert torch.equal(a_train.labels, b_train.labels)
    # train + test is exactly the 1,797 images of the source (as multisets of rows)
    full = load_digits()
    src = np.concatenate([full.images.reshape(len(full.images), -1) / 16.0,
                          full.target[:, None]], axis=1)
    ours = np.concatenate([
        np.concatenate([d.images.flatten(1).double().numpy(), d.labels[:, None].numpy()], axis=1)
        for d in (a_train, a_test)
    ])
    assert ours.shape == src.shape
    np.testing.assert_allclose(np.unique(ours, axis=0), np.unique(src, axis=0), atol=1e-6)
    assert len(np.unique(ours, axis=0)) == len(np.unique(src, axis=0))
    # mean/std registered for normalisation are the data's (roughly)
    info = dataset_spec("digits")
    assert abs(a_train.images.mean().item() - info.mean[0]) < 0.01
    assert abs(a_train.images.std().item() - info.std[0]) < 0.01


# ----------------------------------------------------------------------- MNIST / Fashion


def _require_files(root, name, split):
    raw = root / MNIST_LIKE[name] / "raw"
    missing = [f for f in MNIST_FILES[split] if not (raw / f).exists()]
    if missing:
        pytest.skip(f"{name} {split} files {missing} absent from {raw} "
                    "(set ADVRANK_DATA to a folder holding MNIST/raw and FashionMNIST/raw)")


@pytest.fixture(
    scope="module",
    params=[(n, s) for n in MNIST_LIKE for s in ("train", "test")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def mnist_like(request, data_root):
    """Each (dataset, split) loaded once for the module."""
    name, split = request.param
    _require_files(data_root, name, split)
    return name, split, load_dataset(name, split, root=data_root)


def test_mnist_like_sizes_shapes_range(mnist_like):
    name, split, ds = mnist_like
    assert len(ds) == SIZES[split]
    assert ds.image_shape == (1, 28, 28)
    images = _check_images(ds, (1, 28, 28))
    assert images.max().item() == 1.0 and images.min().item() == 0.0
    info = dataset_spec(name)
    assert abs(images.mean().item() - info.mean[0]) < 0.005
    assert abs(images.std().item() - info.std[0]) < 0.005
    idx = torch.tensor([SIZES[split] - 1, 0, 7])
    assert torch.equal(ds.get_images(idx), images[idx])


def test_mnist_like_labels(mnist_like):
    name, split, ds = mnist_like
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.numel() == 10 and int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert int(counts.sum()) == SIZES[split]
    if name == "fashion":  # exactly balanced, as published
        assert counts.tolist() == [SIZES[split] // 10] * 10
    else:
        assert counts.min().item() > SIZES[split] // 20


@pytest.mark.parametrize("name", sorted(MNIST_LIKE))
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_like_missing_files_named(tmp_path, name, split):
    with pytest.raises(AdvrankError) as err:
        load_dataset(name, split, root=tmp_path)
    msg = str(err.value)
    for f in MNIST_FILES[split]:
        assert f in msg
    assert str((tmp_path / MNIST_LIKE[name] / "raw").resolve()) in msg
    assert "\n" not in msg


# ------------------------------------------------------------------ Stanford Online Products

SOP_HEADER = "image_id class_id super_class_id path\n"
# (class_id, super_class_id, path, size (w, h), colour)
SOP_TRAIN = [
    (1, 1, "bicycle_final/111085122871_0.JPG", (300, 200), (200, 30, 30)),
    (1, 1, "bicycle_final/111085122871_1.JPG", (150, 400), (30, 200, 30)),
    (2, 2, "chair_final/222085122871_0.JPG", (640, 480), (30, 30, 200)),
]
SOP_TEST = [
    (3, 1, "bicycle_final/333085122871_0.JPG", (224, 224), (240, 240, 20)),
    (4, 3, "lamp_final/444085122871_0.JPG", (500, 260), (20, 220, 220)),
    (4, 3, "lamp_final/444085122871_1.JPG", (256, 300), (128, 64, 32)),
    (5, 2, "chair_final/555085122871_0.JPG", (90, 120), (250, 250, 250)),
]


def _write_listing(path, rows):
    lines = [SOP_HEADER] + [f"{i} {c} {s} {p}\n" for i, (c, s, p, *_) in enumerate(rows, 1)]
    path.write_text("".join(lines))


@pytest.fixture
def sop_root(tmp_path):
    """A tiny replica of Stanford_Online_Products: real JPEGs, published listing layout."""
    from PIL import Image

    base = tmp_path / "Stanford_Online_Products"
    for rows in (SOP_TRAIN, SOP_TEST):
        for _, _, rel, size, colour in rows:
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, colour).save(base / rel, format="JPEG", quality=95)
    _write_listing(base / "Ebay_train.txt", SOP_TRAIN)
    _write_listing(base / "Ebay_test.txt", SOP_TEST)
    return tmp_path


@pytest.mark.parametrize("split,rows", [("train", SOP_TRAIN), ("test", SOP_TEST)])
def test_sop_replica_loads(sop_root, split, rows):
    ds = load_dataset("sop", split, root=sop_root)
    assert len(ds) == len(rows) and ds.image_shape == (3, 224, 224)
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [r[0] for r in rows]
    for i, (_, _, _, _, colour) in enumerate(rows):
        image, label = ds[i]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert 0.0 <= image.min().item() and image.max().item() <= 1.0
        assert int(label) == rows[i][0]
        # a solid-colour JPEG stays that colour after resizing/cropping: right file, right scale
        expected = torch.tensor(colour, dtype=torch.float32) / 255.0
        torch.testing.assert_close(image.mean((1, 2)), expected, atol=0.03, rtol=0)


def test_sop_get_images_batched_and_root_variants(sop_root):
    ds = load_dataset("sop", "test", root=sop_root)
    idx = torch.tensor([2, 0])
    batch = ds.get_images(idx)
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch[0], ds[2][0])
    torch.testing.assert_close(batch[1], ds[0][0])
    # the Stanford_Online_Products folder itself also works as the root
    direct = load_dataset("sop", "test", root=sop_root / "Stanford_Online_Products")
    assert direct.labels.tolist() == ds.labels.tolist()


@pytest.mark.parametrize(
    "content,match",
    [
        ("id class super path\n1 1 1 a.JPG\n", "does not look like an SOP listing"),
        ("", "does not look like an SOP listing"),
        (SOP_HEADER, "lists no images"),
        (SOP_HEADER + "1 one 1 bicycle_final/1.JPG\n", r"Ebay_test.txt:2"),
        (SOP_HEADER + "1 1 1 bicycle_final/1.JPG\n2 2 chair_final/2.JPG\n", r"Ebay_test.txt:3"),
    ],
    ids=["bad-header", "empty", "no-rows", "non-integer-class", "missing-column"],
)
def test_sop_malformed_listing(tmp_path, content, match):
    base = tmp_path / "Stanford_Online_Products"
    base.mkdir()
    (base / "Ebay_test.txt").write_text(content)
    with pytest.raises(AdvrankError, match=match):
        load_dataset("sop", "test", root=tmp_path)


def test_sop_missing_listing_and_image(sop_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(AdvrankError, match="Ebay_test.txt not found"):
        load_dataset("sop", "test", root=empty)
    (sop_root / "Stanford_Online_Products" / SOP_TEST[1][2]).unlink()
    ds = load_dataset("sop", "test", root=sop_root)
    with pytest.raises(AdvrankError, match="cannot read SOP image"):
        ds.get_images(torch.tensor([0, 1]))
