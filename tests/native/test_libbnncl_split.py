"""libbnncl predicts the whole embedded test split as the Python engine does after the same learning.

fmnist-b5 exported with the streaming-LDA state ``bnncl.api.Learner`` deploys on the 1,500 embedded base
images; then the fmnist-b5 protocol: five experiences of one new class each (Fashion classes 5 .. 9, the 600
embedded training images of each), in C (``libbnncl/tests/split_main.c``, host gcc, one ``bnncl_learn`` call
per experience) and in Python (``Learner.learn`` per experience), then the 5,000 images of the embedded test
split.  The library merges ``BNNCL_LEARN_CHUNK`` = 20 images at a time, so each experience is 30 merges
(the float32 state rounded between them) where ``StreamingLDA.update`` merges 600 at once.  Checked: the 5,000
predicted classes are identical; and against ``StreamingLDA.update`` fed the same chunks, the same.  Each
experience ends with its class at 600 features, so the leave-one-out tally (classes of 2 .. 100 features) counts
nothing and every class stays above 100: the shrinkage is the fallback rule on both sides (the chunk-fed
``StreamingLDA`` tallies its first chunks, which does not change its final rule).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnncl import assets
from bnncl.api import Learner
from bnncl.data.embedded import load_embedded
from bnncl.device.export_c import export_c
from bnncl.device.modelfile import DeviceModel

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "libbnncl"
NEW_CLASSES = (5, 6, 7, 8, 9)


def test_host_whole_test_split_predictions_identical_after_the_protocol(tmp_path):
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("libbnncl is built with gcc and make; not found")
    model = DeviceModel.load(assets.model_path("fmnist-b5", ".bnn"))
    train, test = load_embedded("train"), load_embedded("test")
    base = np.isin(train.labels, model.pretrained_classes)
    base_images, base_labels = train.images[base], train.labels[base]
    experiences = [np.flatnonzero(train.labels == c) for c in NEW_CLASSES]
    learner = Learner(model)  # default kernel path: its features are bit-identical to the scalar path's
    learner.deploy(base_images, base_labels)
    figures = export_c(model, tmp_path / "model", slda=learner.learner.feature_head)
    chunk = figures["learn_chunk"]
    chunked = copy.deepcopy(learner.learner.feature_head)
    for idx in experiences:
        learner.learn(train.images[idx], train.labels[idx])
        latents = learner.learner.extract(train.images[idx])
        for at in range(0, len(idx), chunk):
            chunked.update(latents[at:at + chunk], train.labels[idx][at:at + chunk])
    test_latents = learner.learner.extract(test.images)
    python_classes = learner.learner.predict(test_latents)
    seen = chunked.counts > 0
    chunked_scores = np.where(seen, chunked.logits(test_latents), -np.inf)
    chunked_classes = np.argmax(chunked_scores, axis=1)

    order = np.concatenate(experiences)
    np.ascontiguousarray(test.images).tofile(tmp_path / "test.u8")
    np.ascontiguousarray(train.images[order]).tofile(tmp_path / "train.u8")
    train.labels[order].astype("<i4").tofile(tmp_path / "labels.i32")
    np.array([len(i) for i in experiences], "<i4").tofile(tmp_path / "sizes.i32")
    prog = tmp_path / "split_main"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), f"BUILD={tmp_path / 'build'}", f"MODEL={tmp_path / 'model'}",
           f"PROG={prog}", "split"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"
    r = subprocess.run([str(prog), *(str(tmp_path / n) for n in ("test.u8", "train.u8", "labels.i32", "sizes.i32"))],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out: dict[str, list[list[str]]] = {}
    for line in r.stdout.splitlines():
        head, *rest = line.split()
        out.setdefault(head, []).append(rest)
    assert int(out["chunk"][0][0]) == chunk
    assert [int(rc) for _, rc in out["learn"]] == [0] * len(NEW_CLASSES)
    c_classes = np.array([int(v[0]) for v in out["p"]])
    assert len(c_classes) == len(test.images) == 5000
    assert np.array_equal(c_classes, chunked_classes), "C differs from StreamingLDA fed the same chunks"
    differ = int(np.count_nonzero(c_classes != python_classes))
    accuracy = float(np.mean(c_classes == test.labels))
    print(f"\nwhole embedded test split: {len(c_classes)} images, {differ} predictions differ from the Python "
          f"Learner, C accuracy {accuracy:.4f}; C seconds (learn, predict): {out['seconds'][0]}")
    assert differ == 0, f"{differ} of {len(c_classes)} predictions differ from the Python Learner"
