"""How many images per second the data pipeline delivers, beside how many the training step consumes: which of the
two bounds a run (pytest-benchmark; skipped in the normal test run).

ImageNet is timed on a folder of real JPEG files written in torchvision's ImageFolder layout (the published
RandomResizedCrop 224 + flip pipeline, decoding included); the digits on the embedded set. Workers:
``SUITE_BENCH_WORKERS`` (default 2), device for the step: ``SUITE_BENCH_DEVICE``.
"""
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from suite.bench import make_train_step
from suite.data import DataConfig, build_data

WORKERS = int(os.environ.get("SUITE_BENCH_WORKERS", "2"))
DEVICE = torch.device(os.environ.get("SUITE_BENCH_DEVICE", "cpu"))
BATCHES = 6


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """20 classes x 16 JPEGs of 500x375 (ImageNet's typical size) in train/ and val/."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(20):
            folder = root / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(16):
                Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    return root


def loader_images_per_second(loader) -> float:
    batches = iter(loader)
    next(batches)  # worker start-up is not throughput
    started, images = time.perf_counter(), 0
    for _, (x, _) in zip(range(BATCHES), batches):
        images += len(x)
    return images / (time.perf_counter() - started)


def step_images_per_second(model: str, dataset: str, batch: int, size: int) -> float:
    classes = 1000 if dataset == "imagenet" else 10
    step = make_train_step(model, dataset, [2, 4, 6, 8], (torch.randn(batch, 3, size, size),
                                                          torch.randint(0, classes, (batch,))), device=DEVICE)
    step()
    started = time.perf_counter()
    step()
    return batch / (time.perf_counter() - started)


@pytest.mark.parametrize("dataset, model, batch, size", [("imagenet", "resnet18", 32, 224), ("digits", "resnet20", 128, 32)])
def test_loader_against_step_throughput(benchmark, imagenet_folder, dataset, model, batch, size):
    cfg = DataConfig(dataset=dataset, root=str(imagenet_folder), image_size=size, workers=WORKERS,
                     pin_memory=DEVICE.type == "cuda")
    loader = build_data(cfg, batch, seed=0).train
    loaded = benchmark.pedantic(loader_images_per_second, args=(loader,), rounds=2, iterations=1)
    consumed = step_images_per_second(model, dataset, min(batch, 8 if DEVICE.type == "cpu" and size > 64 else batch),
                                      size)
    benchmark.extra_info.update(loader_images_per_s=round(loaded, 1), step_images_per_s=round(consumed, 1),
                                workers=WORKERS, device=str(DEVICE), bound="data loader" if loaded < consumed else "step")
    print(f"\n{dataset}: the loader delivers {loaded:.0f} img/s with {WORKERS} worker(s); the {model} 2-4-6-8 joint "
          f"step consumes {consumed:.1f} img/s on {DEVICE}: the {'data loader' if loaded < consumed else 'step'} "
          "bounds a run")
