"""A method's optimiser and learning-rate schedule are its own behaviour: a plugin method trains with AdamW and a
linear warm-up into a cosine, through the unchanged trainer; the built-ins keep SGD / Adam and the cosine."""
import math

import torch

from helpers import dorefa_model
from suite.contract import ParamGroup
from suite.data import DataConfig, build_data
from suite.losses import labels_only
from suite.methods import Trainable, method
from suite.trainer import Recipe, fit

WARMUP, EPOCHS, LR = 2, 4, 0.01


def warmup_cosine(epoch: int) -> float:
    """The learning-rate factor at ``epoch``: linear up to 1 over WARMUP epochs, then a cosine down to 0."""
    if epoch < WARMUP:
        return (epoch + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (epoch - WARMUP) / (EPOCHS - WARMUP)))


def build(arch, num_classes, bits, seen_lrs):
    """What a plugin method's ``build`` hands the trainer (``seen_lrs`` records each epoch's optimiser and rate)."""
    model = dorefa_model(arch, num_classes, bits)
    made: list[torch.optim.Optimizer] = []

    def adamw(groups: list[ParamGroup]) -> list[torch.optim.Optimizer]:
        made[:] = [torch.optim.AdamW([g.torch_group() for g in groups])]
        return made

    def record(epoch: int, epochs: int) -> None:
        seen_lrs.append((type(made[0]), made[0].param_groups[0]["lr"]))

    return Trainable(model, list(bits), labels_only,
                     lambda recipe: [ParamGroup("weights", list(model.parameters()), "adamw", recipe.lr, 0.01)],
                     on_epoch_start=record, optimizers=adamw,
                     schedule=lambda o, recipe: torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine))


def test_a_method_brings_its_own_optimiser_and_warm_up(tmp_path):
    data = build_data(DataConfig(dataset="digits", image_size=8, train_limit=32, val_limit=32), 32, 0)
    seen: list = []
    torch.manual_seed(0)
    trainable = build("resnet8", 10, [2, 4], seen)
    result = fit(trainable, data.train, data.val, Recipe(epochs=EPOCHS, batch_size=32, lr=LR, steps_per_epoch=1),
                 seed=0, run_dir=tmp_path, progress=False)
    assert len(result.history) == EPOCHS
    assert [kind for kind, _ in seen] == [torch.optim.AdamW] * EPOCHS
    assert [lr for _, lr in seen] == [LR * warmup_cosine(e) for e in range(EPOCHS)]
    assert seen[0][1] < seen[1][1] and seen[-1][1] < seen[1][1]  # warm-up, then decay


def test_the_built_in_methods_keep_sgd_adam_and_the_cosine():
    trainable = method("mbquant").build("resnet8", 10, [2, 4], method("mbquant").Options())
    recipe = Recipe(epochs=5)
    optimizers = trainable.optimizers_for(recipe)
    assert [type(o) for o in optimizers] == [torch.optim.SGD, torch.optim.Adam]
    assert all(isinstance(trainable.schedule(o, recipe), torch.optim.lr_scheduler.CosineAnnealingLR)
               for o in optimizers)
