"""The catalog client against a real ``advrank serve --writable`` (a subprocess on loopback):
an upload is found by its own picture as top-1; a deleted one is never answered again; the
answers for other pictures are unchanged after insert + delete; nothing past the upload
budget is sent; a write without the token is refused in one line; the context manager
removes its uploads on exit, an error included; the token never shows."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")

TOKEN = "catalog-token-for-tests"


@pytest.fixture(scope="module")
def service(serve, trained_digits):
    with serve(trained_digits(16), "--writable", "--token", TOKEN, "--max-k", "100000",
               "--scores") as (url, _):
        yield url


@pytest.fixture(scope="module")
def gallery(trained_digits):
    from advrank.experiments.target import load_target

    return load_target(str(trained_digits(16)), "cpu", progress=False).gallery


def client(url, token=TOKEN, budget=10):
    from advrank.oracles.catalog import CatalogClient
    from advrank.oracles.http import HttpOracle

    oracle = HttpOracle(url, "topk:1")
    oracle.check_service()
    return oracle, CatalogClient(oracle, token, budget)


def pictures(gallery, ids):
    return gallery.images(torch.tensor(ids)).cpu()


def test_upload_found_first_then_deleted_for_good(service, gallery):
    oracle, catalog = client(service)
    others = pictures(gallery, [3, 40, 200])
    n = catalog.info.gallery_size
    try:
        before = [catalog.top(x, 20) for x in others]
        with catalog:
            new_picture = pictures(gallery, [7])[0].flip(-1)  # a picture the catalog lacks
            new = catalog.upload(new_picture)
            assert new == n and catalog.read_info().gallery_size == n + 1
            assert catalog.top(new_picture, 1) == [new]
            assert catalog.ranks(new_picture, [new], 5) == [0]
        assert catalog.uploaded == [new] and catalog.deleted == [new] and catalog.held == []
        info = catalog.read_info()
        assert info.gallery_size == n and info.id_bound == n + 1
        assert new not in catalog.top(new_picture, n)
        assert catalog.ranks(new_picture, [new], n) == [None]
        assert [catalog.top(x, 20) for x in others] == before
        assert catalog.searches == 3 + 2 + 2 + 3 and catalog.ledger.used == 1
    finally:
        oracle.close()


def test_the_upload_budget_is_never_exceeded(service, gallery):
    from advrank.errors import AdvrankError

    oracle, catalog = client(service, budget=2)
    try:
        n0 = catalog.read_info().id_bound
        with pytest.raises(AdvrankError, match="upload budget of 2 is spent"), catalog:
            for i in range(5):
                catalog.upload(pictures(gallery, [i])[0])
        assert catalog.ledger.used == 2 and len(catalog.uploaded) == 2
        info = catalog.read_info()
        assert info.id_bound == n0 + 2  # two sent, no more
        assert catalog.held == []  # removed on exit, the error included
        assert info.gallery_size == len(gallery)
    finally:
        oracle.close()


def test_a_write_without_the_token_is_refused_in_one_line(service, gallery):
    from advrank.errors import AdvrankError

    oracle, catalog = client(service, token="not-the-token-123")
    try:
        with pytest.raises(AdvrankError) as err:
            catalog.upload(pictures(gallery, [1])[0])
        line = str(err.value)
        assert "401" in line and "\n" not in line and "not-the-token" not in line
        assert "not-the-token" not in repr(catalog)
        assert catalog.uploaded == [] and catalog.read_info().gallery_size == len(gallery)
        with pytest.raises(AdvrankError, match="need a token"):
            from advrank.oracles.catalog import CatalogClient

            CatalogClient(oracle, "  ", 1)
    finally:
        oracle.close()


def test_a_service_that_is_not_writable_is_refused(serve, trained_digits):
    from advrank.errors import AdvrankError

    with serve(trained_digits(16)) as (url, _):
        from advrank.oracles.catalog import CatalogClient
        from advrank.oracles.http import HttpOracle

        oracle = HttpOracle(url, "topk:1")
        try:
            with pytest.raises(AdvrankError, match="writable: false"):
                CatalogClient(oracle, TOKEN, 1)
        finally:
            oracle.close()


def test_ctrl_c_still_removes_the_uploads(service, gallery):
    oracle, catalog = client(service, budget=3)
    try:
        size = catalog.read_info().gallery_size
        with pytest.raises(KeyboardInterrupt), catalog:
            catalog.upload(pictures(gallery, [5])[0])
            catalog.upload(pictures(gallery, [6])[0])
            raise KeyboardInterrupt
        assert len(catalog.uploaded) == 2 and catalog.held == []
        assert catalog.read_info().gallery_size == size
    finally:
        oracle.close()
