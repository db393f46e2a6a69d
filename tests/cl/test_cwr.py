import numpy as np
import pytest

from bnncl.cl.cwr import CWR, CWRStar


def test_begin_copies_cw_into_present_rows_only():
    cwr = CWRStar(3, 2)
    cwr.cw[:] = [[1, 2], [3, 4], [5, 6]]
    head = cwr.begin_experience([0, 2])
    np.testing.assert_array_equal(head, [[1, 2], [0, 0], [5, 6]])
    assert head.dtype == np.float32


def test_one_class_without_replay_is_shifted_not_zeroed():
    cwr = CWRStar(3, 2)
    trained = np.array([[-1, -1], [1, 3], [7, 7]], dtype=np.float32)
    cwr.end_experience(trained, [1], np.array([0, 10, 0]))
    # avg = mean(1, 3) = 2 -> w' = [-1, 1]; a per-column mean would have zeroed the row.
    np.testing.assert_allclose(cwr.cw[1], [-1, 1])
    np.testing.assert_array_equal(cwr.cw[[0, 2]], 0)
    np.testing.assert_array_equal(cwr.past, [0, 10, 0])


def test_weighted_consolidation_hand_computed():
    cwr = CWRStar(3, 2)
    cwr.cw[0] = [5, -1]
    cwr.past[0] = 4
    trained = np.array([[3, 1], [1, -1], [100, 100]], dtype=np.float32)
    cwr.end_experience(trained, [0, 1], {0: 1, 1: 5})
    # avg = (3 + 1 + 1 - 1) / 4 = 1 (scalar, rows 0 and 1 only); w'0 = [2, 0], w'1 = [0, -2]
    # class 0: k = sqrt(4 / 1) = 2, cw = ([5, -1] * 2 + [2, 0]) / 3 = [4, -2/3]
    np.testing.assert_allclose(cwr.cw[0], [4, -2 / 3], rtol=1e-6)
    np.testing.assert_allclose(cwr.cw[1], [0, -2])
    np.testing.assert_array_equal(cwr.cw[2], 0)
    np.testing.assert_array_equal(cwr.past, [5, 5, 0])


def test_zero_count_present_class_is_left_alone():
    cwr = CWRStar(2, 1)
    cwr.cw[0] = [3]
    cwr.past[0] = 2
    cwr.end_experience(np.array([[9], [1]], dtype=np.float32), [0, 1], [0, 4])
    assert cwr.cw[0, 0] == 3 and cwr.past[0] == 2
    np.testing.assert_allclose(cwr.cw[1], [1 - 5])  # avg over both present rows = 5


def test_plain_cwr_zero_init_and_overwrite():
    cwr = CWR(2, 2)
    cwr.cw[0] = [10, 10]
    cwr.past[0] = 100
    np.testing.assert_array_equal(cwr.begin_experience([0, 1]), 0)
    cwr.end_experience(np.array([[3, 1], [1, -1]], dtype=np.float32), [0, 1], [1, 5])
    np.testing.assert_allclose(cwr.cw, [[2, 0], [0, -2]])
    np.testing.assert_array_equal(cwr.past, [101, 5])


def test_init_from_head_and_state_round_trip():
    cwr = CWRStar(4, 3)
    head = np.arange(12, dtype=np.float32).reshape(4, 3)
    cwr.init_from_head(head, [0, 1], np.array([7, 8, 0, 0]))
    np.testing.assert_array_equal(cwr.consolidated_head()[:2], head[:2])
    np.testing.assert_array_equal(cwr.consolidated_head()[2:], 0)
    arrays, meta = cwr.state_dict()
    other = CWRStar(4, 3)
    other.load_state_dict(arrays, meta)
    np.testing.assert_array_equal(other.cw, cwr.cw)
    np.testing.assert_array_equal(other.past, [7, 8, 0, 0])
    with pytest.raises(ValueError, match="kind"):
        CWR(4, 3).load_state_dict(arrays, meta)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.begin_experience([5]), "present_classes"),
        (lambda c: c.begin_experience([1, 1]), "repeated"),
        (lambda c: c.end_experience(np.zeros((2, 2)), [0], [1, 1, 1]), "trained_head"),
        (lambda c: c.end_experience(np.full((3, 2), np.nan), [0], [1, 1, 1]), "NaN"),
        (lambda c: c.end_experience(np.zeros((3, 2)), [0], [1, 1]), "cur_counts"),
        (lambda c: c.end_experience(np.zeros((3, 2)), [0], {7: 1}), "cur_counts"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(CWRStar(3, 2))
