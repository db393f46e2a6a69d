"""Two CPU processes under torchrun (gloo): replicas must hold identical weights after training."""

import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch.distributed as dist
    from safetensors.torch import save_file
    from bnncl.data.dataset import ImageDataset
    from bnncl.nn.backbones import BackboneConfig
    from bnncl.nn.pretrain import PretrainSettings, pretrain

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 256)
    images = rng.integers(0, 255, (256, 12, 12, 1)).astype(np.uint8)
    ds = ImageDataset(images, labels, ("a", "b", "c"))
    cfg = BackboneConfig("tiny", (12, 12, 1), 8, ((8, 1), (16, 2)), 3)
    s = PretrainSettings(classes=[0, 1, 2], epochs=1, batch_size=32, seed=0, threads=1, max_steps=5)
    model, record = pretrain(ds, ds, cfg, s, out + "/model.safetensors", progress=False, log=lambda m: None)
    rank = dist.get_rank()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    assert record["world_size"] == 2
    dist.destroy_process_group()
    """
)


def test_ddp_two_processes_identical_replicas(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for key in r0:
        if "running_" in key or "num_batches" in key:
            continue  # batch-norm statistics are per replica (broadcast from rank 0 at each forward)
        assert torch.equal(r0[key], r1[key]), key
    # training really happened: the saved model (rank 0) differs from a fresh init
    torch.manual_seed(0)
    from bnncl.nn.backbones import BackboneConfig, build_backbone

    fresh = build_backbone(BackboneConfig("tiny", (12, 12, 1), 8, ((8, 1), (16, 2)), 3)).state_dict()
    assert not torch.equal(fresh["blocks.0.conv.weight"], r0["blocks.0.conv.weight"])
    assert (tmp_path / "model.safetensors").is_file()
