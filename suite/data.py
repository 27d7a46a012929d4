"""Data: the real CIFAR-10/100 and ImageNet loaders (mbquant.md §7) and an embedded, offline digits set for smoke runs.

``build_data(cfg, batch_size, seed)`` returns a seeded, shuffled training loader and a fixed validation loader.

- CIFAR goes through torchvision's own datasets and files (``<root>/cifar-100-python`` etc.) with the
  published augmentation. A missing folder or a failed md5 check is a ``DatasetNotFound`` that says exactly
  what is expected and how to fix it. ``verify_integrity: false`` loads re-packed (or test-written) folders
  without the md5 check; it is an explicit switch and never applies to downloads.
- ImageNet (ILSVRC-2012) is read from ``<root>/imagenet/{train,val}/<wnid>/*.JPEG`` through torchvision's
  ``ImageFolder`` with the published augmentation (imagenet-models.md §8). It cannot be downloaded
  automatically; a missing folder is a ``DatasetNotFound`` saying how to lay it out.
- ``digits`` is scikit-learn's 1,797 real 8x8 handwritten digits, shipped inside the package, so the suite
  runs with no network. The split is fixed (seed 0), whatever the run seed.

Only torch, torchvision, numpy and scikit-learn are imported here, so this file works on a bare GPU image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from suite.fields import FieldError, check_number

# The release's normalisation (main_cifar.py): each CIFAR set with its own statistics.
CIFAR_STATS = {
    "cifar100": (tuple(v / 255 for v in (129.3, 124.1, 112.4)), tuple(v / 255 for v in (68.2, 65.4, 70.4))),
    "cifar10": (tuple(v / 255 for v in (125.3, 123.0, 113.9)), tuple(v / 255 for v in (63.0, 62.1, 66.7))),
}
# Changes to the data pipeline after runs were stored: part of a run's identity, so such runs train anew.
# 2: batches drawn by a ``DistributedSampler`` reseeded every epoch (one process or many: the same order);
#    CIFAR-10 with its own statistics.
# 3: augmentation draws from the training loader's generator, apart from the model's random draws (in worker
#    processes as before; in the main process too), each rank its own stream; training workers restart every
#    epoch (re-seeded) whatever persistent_workers says.
PIPELINE_VERSION = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_FOLDER = "imagenet"  # <root>/imagenet/train/<wnid>/*.JPEG and <root>/imagenet/val/<wnid>/*.JPEG

SUBSET_SEED = 0       # train_limit / val_limit subsets: the same images for every run seed
DIGITS_SPLIT_SEED = 0  # digits train/test split: the same split for every run seed
DIGITS_TEST_FRACTION = 0.25


LOADER_ONLY = ("pin_memory", "persistent_workers", "prefetch_factor")  # fields that change speed, never results
# Images per split of the datasets whose size is fixed: what limits and batch sizes are checked against.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "digits": (1_347, 450)}


@dataclass
class DataConfig:
    """``data`` in a manifest."""

    # Plain dict on purpose: pydantic reads it to validate this dataclass strictly, without importing pydantic here.
    __pydantic_config__ = {"extra": "forbid"}
    dataset: Literal["cifar10", "cifar100", "digits", "imagenet"] = "cifar100"
    root: str | None = None          # None -> $SUITE_DATA_ROOT, else ./data
    download: bool = False           # torchvision download (for users with internet)
    verify_integrity: bool = True    # False: accept re-packed / test-written CIFAR folders (skips the md5 check)
    image_size: int = 32             # digits: side the 8x8 digits are resized to; CIFAR: must be 32;
                                     # imagenet: crop side (published: 224; val resizes to round(size*256/224))
    train_limit: int | None = None   # fixed, seeded subset of this many training images (smoke runs)
    val_limit: int | None = None     # same for the validation/test set
    workers: int = 0                 # DataLoader workers (their augmentation RNG streams differ from the main
                                     # process's, so this is part of a run's identity)
    # Speed only, never results (not part of a run's identity): pinned host memory for GPU copies, evaluation
    # workers kept alive across epochs (training workers always restart: the trainer re-seeds them every epoch),
    # batches each worker prepares ahead.
    pin_memory: bool = False
    persistent_workers: bool = True
    prefetch_factor: int = 2

    def __post_init__(self):
        low = {"cifar10": 32, "cifar100": 32, "digits": 8, "imagenet": 16}.get(self.dataset, 8)
        high = 32 if self.dataset.startswith("cifar") else 1024  # CIFAR images are 32x32: no other size
        check_number(self, "image_size", low, high, integer=True)
        train, val = SPLIT_SIZES.get(self.dataset, (None, None))
        check_number(self, "train_limit", 1, train, integer=True)
        check_number(self, "val_limit", 1, val, integer=True)
        check_number(self, "workers", 0, 256, integer=True)
        check_number(self, "prefetch_factor", 1, 64, integer=True)
        if self.download and self.dataset == "imagenet":
            raise FieldError("download", "imagenet cannot be downloaded (it needs a registered account): "
                                         "extract it under data.root instead")
        if self.download and not self.verify_integrity:
            raise FieldError("verify_integrity", "false cannot be combined with download: true (downloads are "
                                                 "always md5-checked); drop one of the two")

    def train_size(self) -> int | None:
        """Training images a run sees, where the dataset's size is fixed (None for ImageNet folders)."""
        full = SPLIT_SIZES.get(self.dataset, (None, None))[0]
        return self.train_limit or full


@dataclass
class Data:
    train: DataLoader   # shuffled with a seeded torch.Generator, drop_last=True (this rank's share under DDP)
    val: DataLoader     # not shuffled, drop_last=False (this rank's share under DDP: every image exactly once)
    num_classes: int
    image_size: int
    description: str    # one human line: source, size, split
    calibration: DataLoader | None = None  # under DDP: the unsharded training batches (what one process sees)


def epoch_sampler(dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1) -> DistributedSampler:
    """This process's share of a permutation drawn from ``seed`` (which the trainer sets afresh every epoch).

    Process ``rank`` takes every ``world_size``-th index from ``rank`` on (the tail that does not divide is
    dropped), so the i-th batches of all processes together hold exactly the i-th batch of one process: a run
    sees the same images in the same steps whatever the number of processes.
    """
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)


class AugmentationStream(Dataset):
    """``dataset`` whose random augmentation draws from ``generator`` rather than the process's global RNG, as it
    does in DataLoader workers (seeded from the loader's generator): the model's random draws (Bit-Mixer's
    layer-wise bit-widths) stay one stream, alike on every rank, and each rank's augmentation another, its own."""

    def __init__(self, dataset: Dataset, generator: torch.Generator):
        self.dataset, self.generator = dataset, generator

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        outer = torch.get_rng_state()
        torch.set_rng_state(self.generator.get_state())
        try:
            return self.dataset[i]
        finally:
            self.generator.set_state(torch.get_rng_state())
            torch.set_rng_state(outer)


class DatasetNotFound(FileNotFoundError):
    """The dataset's files are missing or fail the integrity check; the message says what to do."""


class DataError(ValueError):
    """The data on disk does not fit the configuration (a limit or batch larger than a split read from disk)."""


def build_data(cfg: DataConfig, batch_size: int, seed: int, eval_batch_size: int | None = None, *,
               rank: int = 0, world_size: int = 1) -> Data:
    """Seeded loaders for ``cfg``. ``batch_size`` is the global batch; with ``world_size`` > 1 (torchrun) this rank
    gets ``batch_size / world_size`` of each batch (``epoch_sampler``), and every ``world_size``-th validation
    image starting at ``rank`` (no padding, so no image counts twice)."""
    if cfg.dataset in ("cifar10", "cifar100"):
        train, val, num_classes, description = _cifar(cfg)
    elif cfg.dataset == "digits":
        train, val, num_classes, description = _digits(cfg)
    elif cfg.dataset == "imagenet":
        train, val, num_classes, description = _imagenet(cfg)
    else:
        raise ValueError(f"unknown data.dataset {cfg.dataset!r}; known: cifar10, cifar100, digits, imagenet")

    train, note = _limit(train, cfg.train_limit, "train_limit")
    description += note
    val, note = _limit(val, cfg.val_limit, "val_limit")
    description += note
    # drop_last with fewer images than one batch would give an epoch with no steps: say so instead.
    if len(train) < batch_size:
        raise DataError(f"only {len(train)} training images for batch_size {batch_size}: "
                        "every batch would be dropped (raise data.train_limit or lower the batch size)")
    if batch_size % world_size:
        raise DataError(f"batch_size {batch_size} (the global batch) does not divide into {world_size} processes")

    loader = dict(num_workers=cfg.workers, pin_memory=cfg.pin_memory)
    if cfg.workers:
        loader |= dict(prefetch_factor=cfg.prefetch_factor)

    def shuffled(rank: int, world: int) -> DataLoader:
        # The trainer re-seeds the sampler and the generator (the augmentation stream) every epoch; workers kept
        # alive would keep their first seeds, so they start afresh with each epoch's.
        generator = torch.Generator().manual_seed(seed)
        images = train if cfg.workers else AugmentationStream(train, generator)
        return DataLoader(images, batch_size=batch_size // world, sampler=epoch_sampler(train, seed, rank, world),
                          drop_last=True, generator=generator, persistent_workers=False, **loader)

    train_loader, calibration = shuffled(rank, world_size), None
    if world_size > 1:
        calibration = shuffled(0, 1)
        val = Subset(val, range(rank, len(val), world_size))
    return Data(train=train_loader, calibration=calibration,
                val=DataLoader(val, batch_size=eval_batch_size or batch_size, shuffle=False, drop_last=False,
                               persistent_workers=cfg.workers > 0 and cfg.persistent_workers, **loader),
                num_classes=num_classes, image_size=cfg.image_size, description=description)


def _root(cfg: DataConfig) -> str:
    # Absolute, so an error or a run record says exactly where it looked.
    return os.path.abspath(os.path.expanduser(cfg.root or os.environ.get("SUITE_DATA_ROOT") or "./data"))


def missing_folder(cfg: DataConfig) -> str | None:
    """The first folder the dataset's files belong in that does not exist (None when all do, or nothing is read from
    disk): a look at the layout only, for tools that plan without loading the data."""
    if cfg.dataset in ("cifar10", "cifar100"):
        from torchvision import datasets

        official = datasets.CIFAR100 if cfg.dataset == "cifar100" else datasets.CIFAR10
        folders = [os.path.join(_root(cfg), official.base_folder)]
    elif cfg.dataset == "imagenet":
        folders = [os.path.join(_root(cfg), IMAGENET_FOLDER, split) for split in ("train", "val")]
    else:
        folders = []
    return next((f for f in folders if not os.path.isdir(f)), None)


def _limit(ds: Dataset, limit: int | None, field: str) -> tuple[Dataset, str]:
    """A fixed (seed 0) subset of ``limit`` items, kept in dataset order; never silently clamped."""
    if limit is None:
        return ds, ""
    if not 1 <= limit <= len(ds):
        raise DataError(f"data.{field}={limit} is out of range: the split has {len(ds)} images (need 1..{len(ds)})")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(SUBSET_SEED))[:limit]
    return Subset(ds, sorted(idx.tolist())), f"; {field} {limit} of {len(ds)} (seed {SUBSET_SEED})"


# ----------------------------------------------------------------------------------------------- CIFAR


def _cifar(cfg: DataConfig):
    from torchvision import datasets, transforms
    from torchvision.datasets.utils import check_integrity

    official = datasets.CIFAR100 if cfg.dataset == "cifar100" else datasets.CIFAR10
    name = "CIFAR-100" if cfg.dataset == "cifar100" else "CIFAR-10"
    root = _root(cfg)
    folder = os.path.join(root, official.base_folder)
    files = [f for f, _ in official.train_list + official.test_list] + [official.meta["filename"]]
    how = (f"Get it by setting `data.download: true` on a machine with internet, or by extracting "
           f"{official.filename} ({official.url}) into {root}, or point the suite at the parent folder "
           f"with SUITE_DATA_ROOT=<dir> or `--set data.root=<dir>`.")

    if cfg.download:
        try:
            official(root, train=False, download=True)  # downloads + extracts (archive md5-checked) if needed
        except Exception as err:  # network errors come in many types; the message keeps the cause
            raise DatasetNotFound(f"{name}: download into {folder} failed ({err}). {how}") from err
    if not os.path.isdir(folder):
        raise DatasetNotFound(f"{name} not found: expected the folder {folder} (with {', '.join(files)}). {how}")
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DatasetNotFound(f"{name} incomplete: {folder} lacks {', '.join(missing)}. {how}")
    if cfg.verify_integrity:
        # torchvision's own md5 list and checker, run once here so the error can name the failing file.
        expected = official.train_list + official.test_list + [[official.meta["filename"], official.meta["md5"]]]
        bad = [f for f, md5 in expected if not check_integrity(os.path.join(folder, f), md5)]
        if bad:
            raise DatasetNotFound(
                f"{name} integrity check failed: {', '.join(bad)} in {folder} do not match the md5 of the official "
                f"archive. Re-download it (data.download: true), or, for deliberately re-packed data, set "
                f"`data.verify_integrity: false` to accept it without the check.")

    normalize = transforms.Normalize(*CIFAR_STATS[cfg.dataset])
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.ToTensor(), normalize])
    # Verified above (or explicitly not wanted), so load without torchvision hashing every file again.
    train = _load_without_md5(official, root, train=True, transform=train_tf)
    val = _load_without_md5(official, root, train=False, transform=val_tf)
    checked = "md5-verified" if cfg.verify_integrity else "integrity check SKIPPED (data.verify_integrity: false)"
    description = (f"{cfg.dataset} (torchvision {name} from {folder}, {checked}; {len(train)} train / {len(val)} test; "
                   f"RandomCrop 32 pad 4 + flip, {name} normalisation)")
    return train, val, (100 if cfg.dataset == "cifar100" else 10), description


def _load_without_md5(official, root: str, **kwargs):
    """torchvision's own CIFAR class, with its md5 entries blanked on the instance before ``__init__`` runs:
    its checks become existence-only. (Not a local subclass: the dataset must stay picklable for workers.)"""
    ds = official.__new__(official)
    ds.train_list = [[f, None] for f, _ in official.train_list]
    ds.test_list = [[f, None] for f, _ in official.test_list]
    ds.meta = {**official.meta, "md5": None}
    official.__init__(ds, root, **kwargs)
    return ds


# -------------------------------------------------------------------------------------------- ImageNet


def _imagenet(cfg: DataConfig):
    from torchvision import datasets, transforms

    size = cfg.image_size
    root = os.path.join(_root(cfg), IMAGENET_FOLDER)
    how = (f"ImageNet cannot be downloaded automatically (it needs a registered account): get ILSVRC2012_img_train.tar "
           f"and ILSVRC2012_img_val.tar from https://image-net.org/, extract the training images into "
           f"{root}/train/<wnid>/*.JPEG and sort the 50,000 validation images into {root}/val/<wnid>/*.JPEG "
           f"(e.g. with the widely used valprep.sh, or torchvision.datasets.ImageNet's archive parser), or point "
           f"the suite at the folder holding imagenet/ with SUITE_DATA_ROOT=<dir> or `--set data.root=<dir>`.")
    resize = round(size * 256 / 224)  # 256 for the published 224 crop
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    transform = {
        # RandomResizedCrop with torchvision's default scale (0.08, 1) and ratio (3/4, 4/3), as released.
        "train": transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize]),
        "val": transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(),
                                   normalize]),
    }
    splits = {}
    for split in ("train", "val"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise DatasetNotFound(f"ImageNet not found: expected the folder {folder} (one sub-folder of images per "
                                  f"class, <wnid>/*.JPEG). {how}")
        try:
            splits[split] = datasets.ImageFolder(folder, transform=transform[split])
        except FileNotFoundError as err:  # no class folder, or a class folder without images
            raise DatasetNotFound(f"ImageNet incomplete: {folder}: {err}. {how}") from err
    train, val = splits["train"], splits["val"]
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DatasetNotFound(f"ImageNet train and val class folders differ (only in train: {only_train[:5]}, "
                              f"only in val: {only_val[:5]}): their labels would not match. {how}")
    description = (f"imagenet (torchvision ImageFolder from {root}; {len(train.classes)} classes, {len(train)} train / "
                   f"{len(val)} val; train RandomResizedCrop {size} + flip, val resize {resize} + center crop {size}, "
                   f"ImageNet normalisation)")
    return train, val, len(train.classes), description


# ---------------------------------------------------------------------------------------------- digits


class _InMemory(Dataset):
    """Pre-processed images in one tensor; with ``pad`` > 0 the images are stored padded and each item is a
    random crop of the original size (from torch's global RNG: in training, the loader's augmentation stream)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int = 0):
        self.images, self.labels, self.pad = images, labels, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.pad:
            size = img.shape[-1] - 2 * self.pad
            y, x = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = img[:, y:y + size, x:x + size]
        return img, self.labels[i]


def _digits(cfg: DataConfig):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = cfg.image_size
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8], 0..16 -> [0,1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    if size != 8:  # once, up front: per-sample resizing would dominate a smoke run on two cores
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = x.expand(-1, 3, -1, -1)  # grey -> 3 channels so the CIFAR models run unchanged

    train_idx, test_idx = train_test_split(torch.arange(len(y)).numpy(), test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=y.numpy())
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean, std = x[train_idx].mean(), x[train_idx].std()  # the training split's own statistics
    # No horizontal flip (it would change a digit's identity). Padding is black (0) before normalising,
    # as torchvision's RandomCrop does on CIFAR.
    pad = size // 8
    train_x = (F.pad(x[train_idx], (pad,) * 4) - mean) / std
    test_x = (x[test_idx] - mean) / std
    train = _InMemory(train_x.contiguous(), y[train_idx], pad=pad)
    val = _InMemory(test_x.contiguous(), y[test_idx])
    resized = f"upsampled to {size}x{size}" if size > 8 else "at 8x8"
    description = (f"digits (scikit-learn, real 8x8 handwritten digits {resized}; fixed stratified split "
                   f"with seed {DIGITS_SPLIT_SEED} whatever the run seed, {len(train)} train / {len(val)} test; "
                   f"random crop pad {pad}, no flip)")
    return train, val, 10, description


# Classes of each dataset's standard release: what a model is built with when no data is loaded (cost analysis).
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10, "imagenet": 1000}


def num_classes(dataset: str) -> int:
    if dataset not in NUM_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(NUM_CLASSES))}")
    return NUM_CLASSES[dataset]
