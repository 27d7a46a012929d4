"""suite.data ImageNet: the ImageFolder layout on a tiny folder of real JPEG files, transforms, limits, errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from suite.data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, DatasetNotFound, build_data

WNIDS = ("n01440764", "n01443537")  # two real ILSVRC-2012 class ids (sorted: label 0, label 1)
PER_CLASS = 3


@pytest.fixture
def imagenet_root(tmp_path):
    """<root>/imagenet/{train,val}/<wnid>/*.JPEG: 2 classes x 3 images per split, flat colours of known value."""
    for split in ("train", "val"):
        for label, wnid in enumerate(WNIDS):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for k in range(PER_CLASS):
                # Non-square, like ImageNet photos; one flat colour (JPEG keeps it nearly exact).
                rgb = (40 + 100 * label, 80 + 20 * k, 200 - 50 * label)
                Image.fromarray(np.full((60 + 10 * k, 80, 3), rgb, dtype=np.uint8)).save(
                    folder / f"{wnid}_{split}_{k}.JPEG", quality=95)
    return tmp_path


def _normalised(rgb):
    return [(v / 255 - m) / s for v, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)]


def test_loads_the_folder_layout(imagenet_root):
    cfg = DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=32)
    data = build_data(cfg, batch_size=2, seed=0, eval_batch_size=4)
    assert data.num_classes == 2 and data.image_size == 32
    assert "6 train / 6 val" in data.description and "resize 37" in data.description  # round(32 * 256/224)
    x, y = next(iter(data.train))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(data.train) == 3 and data.train.drop_last
    assert sorted(int(v) for _, yb in data.train for v in yb) == [0, 0, 0, 1, 1, 1]

    batches = list(data.val)  # not shuffled: sorted wnid folders, files in name order
    assert [len(b[1]) for b in batches] == [4, 2]
    val_x, val_y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert val_x.shape == (6, 3, 32, 32) and val_y.tolist() == [0, 0, 0, 1, 1, 1]
    # A flat image stays flat through resize + center crop: every pixel = the normalised colour (JPEG error ~1/255).
    for i, (label, k) in enumerate((lab, k) for lab in range(2) for k in range(PER_CLASS)):
        expected = torch.tensor(_normalised((40 + 100 * label, 80 + 20 * k, 200 - 50 * label)))
        torch.testing.assert_close(val_x[i].mean(dim=(1, 2)), expected, atol=0.05, rtol=0)
        assert val_x[i].std(dim=(1, 2)).max() < 0.05


def test_published_transforms(imagenet_root):
    from torchvision import transforms

    data = build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=224), 2, 0)
    train_tf, val_tf = data.train.dataset.dataset.transform.transforms, data.val.dataset.transform.transforms
    assert [type(t) for t in train_tf] == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip,
                                           transforms.ToTensor, transforms.Normalize]
    assert train_tf[0].size == (224, 224) and train_tf[0].scale == (0.08, 1.0)
    assert [type(t) for t in val_tf] == [transforms.Resize, transforms.CenterCrop, transforms.ToTensor,
                                         transforms.Normalize]
    assert val_tf[0].size == 256 and val_tf[1].size == (224, 224)
    assert tuple(val_tf[3].mean) == (0.485, 0.456, 0.406) and tuple(val_tf[3].std) == (0.229, 0.224, 0.225)
    assert data.val.dataset[0][0].shape == (3, 224, 224)


def test_limits(imagenet_root):
    cfg = DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=32, train_limit=4, val_limit=2)
    data = build_data(cfg, batch_size=2, seed=0)
    assert len(data.train.dataset) == 4 and len(data.val.dataset) == 2 and "train_limit 4 of 6" in data.description
    with pytest.raises(ValueError, match="val_limit=7"):
        build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=32, val_limit=7), 2, 0)


def test_missing_folder_names_the_path_and_how_to_get_imagenet(tmp_path, imagenet_root):
    with pytest.raises(DatasetNotFound) as err:
        build_data(DataConfig(dataset="imagenet", root=str(tmp_path / "nowhere"), image_size=32), 2, 0)
    msg = str(err.value)
    assert os.path.join(str(tmp_path / "nowhere"), "imagenet", "train") in msg
    assert "cannot be downloaded automatically" in msg and "image-net.org" in msg and "SUITE_DATA_ROOT" in msg
    assert isinstance(err.value, FileNotFoundError)

    # val missing: named too.
    for f in (imagenet_root / "imagenet" / "val").rglob("*.JPEG"):
        f.unlink()
    for d in (imagenet_root / "imagenet" / "val").iterdir():
        d.rmdir()
    with pytest.raises(DatasetNotFound, match="imagenet/val"):
        build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=32), 2, 0)
    (imagenet_root / "imagenet" / "val").rmdir()
    with pytest.raises(DatasetNotFound, match=r"expected the folder .*imagenet/val"):
        build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=32), 2, 0)


def test_mismatched_classes_and_bad_options(imagenet_root):
    extra = imagenet_root / "imagenet" / "val" / "n99999999"
    extra.mkdir()
    Image.new("RGB", (40, 40)).save(extra / "x.JPEG")
    with pytest.raises(DatasetNotFound, match="only in val: \\['n99999999'\\]"):
        build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=32), 2, 0)
    with pytest.raises(ValueError, match="imagenet cannot be downloaded"):
        build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), download=True), 2, 0)
    with pytest.raises(ValueError, match="image_size: must be an integer >= 16"):
        build_data(DataConfig(dataset="imagenet", root=str(imagenet_root), image_size=8), 2, 0)
