"""Host pretraining of a backbone on base classes: seeded, resumable, DDP-ready (``torchrun``).

Under ``torchrun --nproc_per_node=N`` each process takes a disjoint shard of every epoch's
permutation (global batch size unchanged) and DistributedDataParallel averages the gradients
(gloo on CPU, nccl on GPU). Rank 0 evaluates, shows progress and writes the files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from bnncl.data.dataset import ImageDataset
from bnncl.errors import BnnclError
from bnncl.machine import machine_info
from bnncl.nn.augment import dataset_stats, random_crop_flip, to_input
from bnncl.nn.backbones import Backbone, BackboneConfig
from bnncl.nn.checkpoint import atomic_save, read_metadata, save_model


@dataclass
class PretrainSettings:
    """Hyper-parameters of one pretraining run (recorded in the output file)."""

    classes: list[int]
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    seed: int = 0
    crop_pad: int = 4
    hflip: bool = True
    threads: int | None = None
    max_steps: int | None = None  # stop early (tests, smoke runs)
    init: str | None = None  # start from this model file's weights (same architecture; fine-tuning)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def evaluate(model: Backbone, images: np.ndarray, targets: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC ``images`` against ``targets`` (head indices)."""
    model.eval()
    cfg = model.config
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_input(torch.from_numpy(images[i:i + batch]), cfg.mean, cfg.std)
            correct += int((model(x).argmax(1).numpy() == targets[i:i + batch]).sum())
    return correct / max(1, len(images))


def _remap(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    lut = np.full(int(labels.max()) + 1 if len(labels) else 1, -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    return lut[labels]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"optim.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return tensors, json.dumps(sd["param_groups"])


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def _machine() -> dict[str, Any]:
    return machine_info() | {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                             "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


_ARCH_FIELDS = ("input_shape", "stem_channels", "blocks", "binary", "binary_latents", "sign_gradient")


def _init_from(path: str, config: BackboneConfig,
               num_classes: int) -> tuple[Backbone, BackboneConfig, dict[str, Any]]:
    """The model in ``path`` (for its weights), the config to train (``config``'s training options,
    ``stem_bits``, on the initial model's architecture and input normalisation: its weights were trained
    with that mean/std) and the initial model's training record.  A different architecture or class
    count is a user error."""
    from bnncl.nn.export import load_host_model

    init, init_record = load_host_model(path)  # a model file or a pretraining checkpoint
    icfg = init.config
    diff = [f for f in _ARCH_FIELDS if getattr(icfg, f) != getattr(config, f)]
    if icfg.num_classes != num_classes:
        diff.append(f"num_classes ({icfg.num_classes} vs {num_classes} classes to train)")
    if diff:
        raise BnnclError(f"--init {path}: {icfg.name} does not match the {config.name} architecture to train "
                         f"(differs in {', '.join(diff)})")
    return init, replace(icfg, stem_bits=config.stem_bits), init_record


def pretrain(
    train: ImageDataset,
    test: ImageDataset,
    config: BackboneConfig,
    settings: PretrainSettings,
    output: str | os.PathLike,
    resume: bool = False,
    dataset_name: str = "",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Backbone, dict[str, Any]]:
    """Train ``config`` on ``settings.classes`` of ``train``; write ``output`` (model) and a checkpoint.

    The checkpoint ``<output>.ckpt`` is written after every epoch; ``resume=True`` continues from it
    bit-for-bit (same permutation and augmentation streams, which are derived from seed and epoch).
    Returns the trained model (this process's replica) and the training record stored in the model file.
    """
    ddp = _init_distributed()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    output = Path(output)
    ckpt_path = output.with_name(output.name + ".ckpt")
    classes = [int(c) for c in settings.classes]
    tr = train.with_classes(classes)
    te = test.with_classes(classes)
    if len(tr) == 0:
        raise BnnclError(f"no training images for classes {classes}")
    if train.image_shape != config.input_shape:
        raise BnnclError(f"images are {train.image_shape}, the {config.name} backbone expects {config.input_shape}")
    y_tr, y_te = _remap(tr.labels, classes), _remap(te.labels, classes)
    init_record: dict[str, Any] = {}
    if settings.init:
        init_model, config, init_record = _init_from(settings.init, config, len(classes))
    else:
        mean, std = dataset_stats(tr.images)
        config = replace(config, num_classes=len(classes), mean=mean, std=std)

    torch.manual_seed(settings.seed)
    model = Backbone(config)
    if settings.init:
        model.load_state_dict(init_model.state_dict(), strict=True)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() > 1 and "head" not in name else no_decay).append(p)
    opt = torch.optim.Adam([{"params": decay, "weight_decay": settings.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    steps_per_epoch = math.ceil(len(tr) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = int(settings.warmup_epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    start_epoch, elapsed = 0, 0.0

    if resume and ckpt_path.is_file():
        meta = read_metadata(ckpt_path)
        saved = json.loads(meta["settings"])
        if saved["classes"] != classes or saved["seed"] != settings.seed:
            raise BnnclError(f"{ckpt_path}: checkpoint was made with classes/seed {saved['classes']}/{saved['seed']}")
        tensors = load_file(str(ckpt_path))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(opt, tensors, meta["param_groups"])
        start_epoch = int(meta["epoch"])
        history = json.loads(meta["history"])
        elapsed = float(meta["elapsed"])
        if ddp.main:
            log(f"resumed from {ckpt_path} at epoch {start_epoch}")

    net: torch.nn.Module = model
    if ddp.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    local_bs = max(1, settings.batch_size // ddp.world)
    images_t = torch.from_numpy(tr.images)
    targets_t = torch.from_numpy(y_tr)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        perm = torch.randperm(len(tr), generator=gen)
        model.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{settings.epochs}",
                   disable=not (progress and ddp.main), leave=False)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * settings.batch_size:(b + 1) * settings.batch_size][ddp.rank::ddp.world][:local_bs]
            x = to_input(images_t[idx], config.mean, config.std)
            x = random_crop_flip(x, settings.crop_pad, settings.hflip, gen)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, settings.lr)
            loss = F.cross_entropy(net(x), targets_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running / (b + 1):.3f}")
            if settings.max_steps is not None and step >= settings.max_steps:
                break
        bar.close()
        elapsed += time.time() - t0
        acc = evaluate(model, te.images, y_te) if ddp.main else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": running / max(1, b + 1), "test_accuracy": acc,
                        "elapsed_seconds": round(elapsed, 1)})
        if ddp.main:
            log(f"epoch {epoch + 1}/{settings.epochs}: loss {running / max(1, b + 1):.4f}  "
                f"test acc {acc * 100:.2f}%  ({elapsed / 60:.1f} min)")
            opt_tensors, groups = _flatten_optimizer(opt)
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
            atomic_save(tensors, {"settings": json.dumps(asdict(settings)), "param_groups": groups,
                                  "epoch": str(epoch + 1), "history": json.dumps(history),
                                  "elapsed": str(elapsed), "config": config.to_json()}, ckpt_path)
        if ddp.world > 1:
            dist.barrier()
        if settings.max_steps is not None and step >= settings.max_steps:
            break

    record = {
        "dataset": dataset_name, "classes": classes,
        "class_names": [train.class_names[c] for c in classes],
        "all_class_names": list(train.class_names),
        "settings": asdict(settings), "history": history,
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "train_seconds": round(elapsed, 1), "world_size": ddp.world, "machine": _machine(),
    }
    if init_record.get("history") is not None:
        record["init_record"] = init_record  # the model fine-tuned from: its whole training record
    if ddp.main:
        save_model(model, output, record)
    return model, record
