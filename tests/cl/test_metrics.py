import json
import math

import numpy as np
import pytest

from bnncl.cl.metrics import (
    CLResults,
    ExperienceResult,
    accuracy,
    confusion_matrix,
    forgetting,
    per_class_accuracy,
    predict,
)


def test_confusion_and_per_class():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0, 1, 1, 1, 0])
    np.testing.assert_array_equal(confusion_matrix(y, p, 3), [[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    acc = per_class_accuracy(y, p, 3)
    assert acc[0] == 0.5 and acc[1] == pytest.approx(2 / 3) and math.isnan(acc[2])
    assert accuracy(y, p) == 0.6
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix(y, np.array([0, 1, 1, 1, 3]), 3)


def test_predict_restricted_to_allowed_classes():
    logits = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 9.0]])
    np.testing.assert_array_equal(predict(logits), [1, 2])
    np.testing.assert_array_equal(predict(logits, [0, 2]), [2, 2])
    with pytest.raises(ValueError, match="allowed_classes"):
        predict(logits, [3])


def test_forgetting_hand_computed():
    nan = np.nan
    hist = np.array(
        [
            [0.9, nan, 0.0],  # after experience 0 (class 0 seen)
            [0.7, 0.8, 0.0],  # after experience 1 (class 1 seen)
            [0.5, 0.6, 0.9],  # after experience 2 (class 2 seen; the last)
        ]
    )
    mean, per = forgetting(hist, {0: 0, 1: 1, 2: 2})
    # class 0: max(0.9, 0.7) - 0.5 = 0.4; class 1: 0.8 - 0.6 = 0.2; class 2 first seen at the end
    assert per == pytest.approx({0: 0.4, 1: 0.2})
    assert mean == pytest.approx(0.3)
    assert forgetting(hist[:1], {0: 0}) == (None, {})


def record(i, classes, per_class):
    acc = float(np.nanmean(per_class))
    return ExperienceResult(i, classes, classes, acc, acc, per_class, 0.5)


def test_results_summary_and_json():
    res = CLResults("cwr_star", 2)
    assert res.final_accuracy is None and res.forgetting is None
    res.experiences += [record(0, [0], [1.0, 0.0]), record(1, [1], [0.6, 1.0])]
    assert res.final_accuracy == pytest.approx(0.8)
    assert res.average_accuracy == pytest.approx((0.5 + 0.8) / 2)
    assert res.forgetting == pytest.approx(0.4)
    d = json.loads(res.to_json())
    assert d["per_class_forgetting"] == {"0": pytest.approx(0.4)}
    assert d["experiences"][1]["classes"] == [1] and d["experiences"][0]["train_seconds"] == 0.5
