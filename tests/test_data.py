"""suite.data: real torchvision CIFAR loading on test-written folders, the md5 trap, and the digits set."""
import os
import pickle

import numpy as np
import pytest
import torch

from suite.data import Data, DataConfig, DatasetNotFound, build_data

N_TRAIN, N_TEST = 20, 10


def _images(n: int, offset: int) -> np.ndarray:
    """Known pixels: image i, channel c, row y, column x = (offset + 7*i + 3*c + y + 2*x) % 256, as R, G, B planes."""
    i, c, y, x = np.meshgrid(np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((offset + 7 * i + 3 * c + y + 2 * x) % 256).astype(np.uint8).reshape(n, 3072)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar100_root(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n, offset in (("train", N_TRAIN, 0), ("test", N_TEST, 100)):
        fine = [(5 * k + (offset > 0)) % 100 for k in range(n)]
        _dump(folder / split, {"data": _images(n, offset), "fine_labels": fine, "coarse_labels": [f % 20 for f in fine],
                               "filenames": [f"{split}_{k}.png" for k in range(n)], "batch_label": f"{split} batch"})
    _dump(folder / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                            "coarse_label_names": [f"coarse{k}" for k in range(20)]})
    return tmp_path


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(1, 6):  # 4 images per batch: 20 train images in all
        _dump(folder / f"data_batch_{b}", {"data": _images(4, 4 * (b - 1) * 7), "labels": [(b + k) % 10 for k in range(4)],
                                           "filenames": [f"b{b}_{k}.png" for k in range(4)], "batch_label": f"batch {b}"})
    _dump(folder / "test_batch", {"data": _images(N_TEST, 100), "labels": [k % 10 for k in range(N_TEST)],
                                  "filenames": [f"t{k}.png" for k in range(N_TEST)], "batch_label": "test batch"})
    _dump(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})
    return tmp_path


# The release's normalisation (main_cifar.py), per dataset, in 0..255 units.
RELEASE_STATS = {"cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
                 "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))}


def _expected_normalised(pixels_uint8_chw: np.ndarray, dataset: str = "cifar100") -> torch.Tensor:
    t = torch.tensor(pixels_uint8_chw, dtype=torch.float64) / 255
    mean, std = (torch.tensor(v, dtype=torch.float64) / 255 for v in RELEASE_STATS[dataset])
    return ((t - mean[:, None, None]) / std[:, None, None]).float()


# ------------------------------------------------------------------------------------------------ CIFAR


def test_cifar100_md5_check_rejects_test_written_folder(cifar100_root):
    with pytest.raises(DatasetNotFound) as err:
        build_data(DataConfig(dataset="cifar100", root=str(cifar100_root)), batch_size=4, seed=0)
    msg = str(err.value)
    assert "integrity" in msg and "verify_integrity" in msg and "cifar-100-python" in msg


def test_cifar100_loads_without_integrity_check(cifar100_root):
    cfg = DataConfig(dataset="cifar100", root=str(cifar100_root), verify_integrity=False)
    data = build_data(cfg, batch_size=4, seed=0, eval_batch_size=3)
    assert isinstance(data, Data) and data.num_classes == 100 and data.image_size == 32
    assert "SKIPPED" in data.description and f"{N_TRAIN} train / {N_TEST} test" in data.description

    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(data.train) == N_TRAIN // 4 and data.train.drop_last
    train_labels = sorted(int(v) for _, yb in data.train for v in yb)
    assert train_labels == sorted((5 * k) % 100 for k in range(N_TRAIN))

    # Val: not shuffled, last partial batch kept, labels in file order, exact normalised pixels.
    batches = list(data.val)
    assert [len(b[1]) for b in batches] == [3, 3, 3, 1]
    val_x, val_y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert val_y.tolist() == [(5 * k + 1) % 100 for k in range(N_TEST)]
    written = _images(N_TEST, 100).reshape(N_TEST, 3, 32, 32)
    for i in (0, 7):
        torch.testing.assert_close(val_x[i], _expected_normalised(written[i]), atol=1e-5, rtol=0)
    # A single known pixel, spelled out: image 7, green plane, row 2, column 5.
    g = (100 + 7 * 7 + 3 * 1 + 2 + 2 * 5) % 256
    assert val_x[7, 1, 2, 5].item() == pytest.approx((g - 124.1) / 65.4, abs=1e-5)


def test_cifar100_md5_check_passes_on_matching_files(cifar100_root, monkeypatch):
    # Pretend our test-written files are the official ones: the verified path must then load them.
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import calculate_md5

    folder = cifar100_root / "cifar-100-python"
    md5 = {f: calculate_md5(str(folder / f)) for f in ("train", "test", "meta")}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})
    data = build_data(DataConfig(dataset="cifar100", root=str(cifar100_root)), batch_size=4, seed=0)
    assert "md5-verified" in data.description and len(data.val.dataset) == N_TEST
    with open(folder / "test", "ab") as f:  # one appended byte: rejected, naming the file
        f.write(b"x")
    with pytest.raises(DatasetNotFound, match="integrity check failed: test in"):
        build_data(DataConfig(dataset="cifar100", root=str(cifar100_root)), batch_size=4, seed=0)


def test_cifar10_loads_without_integrity_check(cifar10_root):
    cfg = DataConfig(dataset="cifar10", root=str(cifar10_root), verify_integrity=False)
    data = build_data(cfg, batch_size=5, seed=0, eval_batch_size=N_TEST)
    assert data.num_classes == 10
    x, y = next(iter(data.train))
    assert x.shape == (5, 3, 32, 32)
    assert sorted(int(v) for _, yb in data.train for v in yb) == sorted((b + k) % 10 for b in range(1, 6) for k in range(4))
    val_x, val_y = next(iter(data.val))
    assert val_y.tolist() == [k % 10 for k in range(N_TEST)]
    torch.testing.assert_close(val_x[3], _expected_normalised(_images(N_TEST, 100).reshape(N_TEST, 3, 32, 32)[3],
                                                              "cifar10"), atol=1e-5, rtol=0)
    with pytest.raises(DatasetNotFound, match="verify_integrity"):
        build_data(DataConfig(dataset="cifar10", root=str(cifar10_root)), batch_size=5, seed=0)


def test_cifar_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        build_data(DataConfig(dataset="cifar100", root=str(tmp_path)), batch_size=4, seed=0)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "cifar-100-python") in msg
    assert "data.download" in msg and "SUITE_DATA_ROOT" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_cifar_incomplete_folder_names_the_missing_file(cifar100_root):
    (cifar100_root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetNotFound, match="lacks meta"):
        build_data(DataConfig(dataset="cifar100", root=str(cifar100_root), verify_integrity=False), 4, 0)


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_DATA_ROOT", str(tmp_path / "envroot"))
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "envroot" / "cifar-10-batches-py")):
        build_data(DataConfig(dataset="cifar10"), batch_size=4, seed=0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "home" / "d" / "cifar-100-python")):
        build_data(DataConfig(dataset="cifar100", root="~/d"), batch_size=4, seed=0)  # cfg.root wins, ~ expanded


def test_cifar_rejects_other_image_sizes_and_unchecked_download(cifar100_root):
    with pytest.raises(ValueError, match="image_size: must be 32"):
        build_data(DataConfig(dataset="cifar100", root=str(cifar100_root), image_size=16), 4, 0)
    with pytest.raises(ValueError, match="verify_integrity"):
        build_data(DataConfig(dataset="cifar100", root=str(cifar100_root), download=True, verify_integrity=False), 4, 0)


def test_cifar_limits(cifar100_root):
    cfg = DataConfig(dataset="cifar100", root=str(cifar100_root), verify_integrity=False, train_limit=8, val_limit=5)
    data = build_data(cfg, batch_size=4, seed=0)
    assert len(data.train.dataset) == 8 and len(data.val.dataset) == 5
    with pytest.raises(ValueError, match=f"val_limit=11.*{N_TEST}"):
        build_data(DataConfig(dataset="cifar100", root=str(cifar100_root), verify_integrity=False, val_limit=11), 4, 0)


# ----------------------------------------------------------------------------------------------- digits


def _labels(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


@pytest.mark.parametrize("size", [16, 32])
def test_digits_split_and_shapes(size):
    data = build_data(DataConfig(dataset="digits", image_size=size), batch_size=64, seed=1)
    assert len(data.train.dataset) == 1347 and len(data.val.dataset) == 450
    assert data.num_classes == 10 and data.image_size == size
    assert "1347 train / 450 test" in data.description and f"{size}x{size}" in data.description
    x, y = next(iter(data.train))
    assert x.shape == (64, 3, size, size) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey replicated
    assert len(data.train) == 1347 // 64
    val_x = torch.cat([b[0] for b in data.val])
    assert val_x.shape == (450, 3, size, size)
    assert sorted(set(_labels(data.val))) == list(range(10))
    # Normalised with the training split's statistics: the train images (pre-crop) have mean 0, std 1 inside.
    assert abs(val_x.mean().item()) < 0.1 and 0.8 < val_x.std().item() < 1.2


def test_digits_split_fixed_across_run_seeds_order_seeded():
    a = build_data(DataConfig(dataset="digits", image_size=16), batch_size=32, seed=1)
    b = build_data(DataConfig(dataset="digits", image_size=16), batch_size=32, seed=2)
    a2 = build_data(DataConfig(dataset="digits", image_size=16), batch_size=32, seed=1)
    # Same split whatever the run seed.
    assert torch.equal(a.val.dataset.images, b.val.dataset.images) and torch.equal(a.val.dataset.labels, b.val.dataset.labels)
    assert torch.equal(a.train.dataset.dataset.images, b.train.dataset.dataset.images)
    assert _labels(a.val) == _labels(b.val)
    # Training order: seeded by the run seed, reproducible; the trainer sets the sampler's seed every epoch.
    first = _labels(a.train)
    assert first != _labels(b.train)
    assert first == _labels(a2.train) == _labels(a.train)
    a.train.sampler.seed = 7
    assert _labels(a.train) != first
    a.train.sampler.seed = 1
    assert _labels(a.train) == first
    # Pixels (random crops) too, given the loader's generator, which the trainer seeds; the global RNG (the
    # model's random draws) plays no part.
    a.train.generator.manual_seed(0)
    torch.manual_seed(0)
    xa = next(iter(a.train))[0]
    a2.train.generator.manual_seed(0)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    xa2 = next(iter(a2.train))[0]
    assert torch.equal(xa, xa2) and torch.equal(torch.get_rng_state(), state)


def test_digits_train_augmentation_is_a_padded_crop():
    data = build_data(DataConfig(dataset="digits", image_size=16), batch_size=16, seed=0)
    ds = data.train.dataset.dataset
    assert ds.pad == 2 and ds.images.shape[-1] == 20
    torch.manual_seed(0)
    crops = {tuple(ds[0][0].flatten()[:40].tolist()) for _ in range(30)}
    assert len(crops) > 1  # the crop moves
    val = data.val.dataset
    assert torch.equal(val[0][0], val[0][0])  # val is deterministic


def test_digits_limits():
    cfg = DataConfig(dataset="digits", image_size=16, train_limit=100, val_limit=40)
    data = build_data(cfg, batch_size=32, seed=0)
    assert len(data.train.dataset) == 100 and len(data.val.dataset) == 40
    assert len(data.train) == 3 and "train_limit 100 of 1347" in data.description
    again = build_data(cfg, batch_size=32, seed=5)
    assert data.train.dataset.dataset.indices == again.train.dataset.dataset.indices  # same subset for every run seed
    with pytest.raises(ValueError, match="train_limit: must be .*<= 1347, got 2000"):
        build_data(DataConfig(dataset="digits", train_limit=2000), batch_size=32, seed=0)
    with pytest.raises(ValueError, match="val_limit: must be .*<= 450, got 451"):
        build_data(DataConfig(dataset="digits", val_limit=451), batch_size=32, seed=0)
    with pytest.raises(ValueError, match="batch_size 64"):
        build_data(DataConfig(dataset="digits", train_limit=10), batch_size=64, seed=0)


def test_unknown_dataset_and_small_image_size():
    with pytest.raises(ValueError, match="unknown data.dataset"):
        build_data(DataConfig(dataset="mnist"), batch_size=8, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size"):
        build_data(DataConfig(dataset="digits", image_size=4), batch_size=8, seed=0)


def test_config_validates_strictly_with_pydantic():
    pydantic = pytest.importorskip("pydantic")
    adapter = pydantic.TypeAdapter(DataConfig)
    assert adapter.validate_python({"dataset": "digits", "image_size": 16}) == DataConfig(dataset="digits", image_size=16)
    for bad in ({"dataset": "digits", "bogus": 1}, {"dataset": "mnist"}):
        with pytest.raises(pydantic.ValidationError):
            adapter.validate_python(bad)


def test_datasets_pickle_for_worker_processes(cifar100_root):
    # spawn / forkserver start methods pickle the dataset into each worker.
    cifar = build_data(DataConfig(dataset="cifar100", root=str(cifar100_root), verify_integrity=False), 4, 0)
    clone = pickle.loads(pickle.dumps(cifar.val.dataset))
    torch.testing.assert_close(clone[3][0], cifar.val.dataset[3][0])
    digits = build_data(DataConfig(dataset="digits", image_size=16, workers=1, train_limit=64, val_limit=32), 32, 0)
    assert pickle.loads(pickle.dumps(digits.train.dataset)).dataset.pad == 2
    x, y = next(iter(digits.train))  # one real worker process
    assert x.shape == (32, 3, 16, 16)
