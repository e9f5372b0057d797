"""The handbook benchmark's protocol pieces: exact rolling windows, the test-set rule and the fold dates."""

from __future__ import annotations

import numpy as np

from benchmarks import quality
from benchmarks.quality import Data, Fold, _window_sums, book_features, folds

DAY = 86_400_000


def _brute(key: np.ndarray, ts: np.ndarray, v: np.ndarray, older: int, newer: int) -> np.ndarray:
    out = np.zeros(len(ts))
    for i in range(len(ts)):
        same = key == key[i]
        if newer == 0:  # rolling up to the row itself: earlier rows, and same-time rows up to this one
            inside = (
                same & (ts > ts[i] - older) & ((ts < ts[i]) | ((ts == ts[i]) & (np.arange(len(ts)) <= i)))
            )
        else:
            inside = same & (ts > ts[i] - older) & (ts <= ts[i] - newer)
        out[i] = v[inside].sum()
    return out


def test_window_sums_equal_a_brute_force_scan() -> None:
    rng = np.random.default_rng(7)
    n = 400
    ts = np.sort(rng.integers(0, 20 * DAY, n))
    ts[10:14] = ts[10]  # ties in time
    key = rng.integers(0, 12, n)
    v = rng.random(n)
    for older, newer in ((DAY, 0), (7 * DAY, 0), (8 * DAY, 7 * DAY), (37 * DAY, 7 * DAY)):
        np.testing.assert_allclose(_window_sums(key, ts, v, older, newer), _brute(key, ts, v, older, newer))


def test_the_folds_are_the_books_weeks() -> None:
    starts = [str(np.datetime64(f.start_day, "D")) for f in folds()]
    assert starts == ["2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15"]
    f = folds()[0]
    assert str(np.datetime64(f.test[0], "D")) == "2018-08-08"  # 7 training days, 7 of delay
    assert f.test[1] - f.test[0] == 7


def _data(rows: list[tuple[int, int, bool]]) -> Data:
    """(day, customer, fraud) rows, one per day at noon."""
    day = np.asarray([r[0] for r in rows], dtype=np.int64)
    return Data(
        ts_ms=day * DAY + DAY // 2,
        customer=np.asarray([r[1] for r in rows], dtype=np.int64),
        terminal=np.zeros(len(rows), dtype=np.int64),
        amount=np.ones(len(rows)),
        fraud=np.asarray([r[2] for r in rows], dtype=bool),
        scenario=np.asarray([2 * r[2] for r in rows], dtype=np.int8),
    )


def test_known_compromised_cards_leave_the_test_set() -> None:
    fold = Fold(100)  # train days 100..106, delay 107..113, test 114..120
    data = _data([
        (101, 1, True),   # card 1: fraud in the training week -> never in the test set
        (108, 2, True),   # card 2: fraud on delay day 1 -> out from test day 2 on
        (114, 1, False), (114, 2, False), (114, 3, False),
        (116, 2, False), (116, 3, True),
        (121, 3, False),  # after the test week
    ])  # fmt: skip
    kept = quality.test_rows(data, fold)
    assert [(int(d), int(c)) for d, c in zip(data.day[kept], data.customer[kept], strict=True)] == [
        (114, 2), (114, 3), (116, 3),
    ]  # fmt: skip


def test_book_features_follow_their_definitions() -> None:
    data = _data([(100, 1, False), (100, 1, False), (103, 1, True), (111, 1, False)])
    data.amount[:] = [10.0, 30.0, 50.0, 70.0]
    X = book_features(data)
    assert X.shape == (4, 15)
    assert X[1, 3] == 2 and X[1, 6] == 20.0  # customer: 2 transactions in the last day, mean 20
    assert X[2, 4] == 3 and X[2, 7] == 30.0  # 7 days: all three so far
    # terminal windows end 7 days back: on day 111 the 7-day window (day 97..104] holds 3 rows, 1 fraud
    assert X[3, 10] == 3 and X[3, 13] == 1 / 3
    assert X[0, 9] == 0 and X[0, 12] == 0  # nothing known a week back


def test_the_scenario_table_measures_each_scenario_against_genuine_rows() -> None:
    data = _data([(100, 1, False), (100, 2, True), (108, 3, True), (108, 4, False)])
    data.scenario[:] = [0, 2, 3, 0]
    rows = np.ones(4, dtype=bool)
    text = quality.by_scenario(data, [(rows, np.array([0.1, 0.9, 0.05, 0.2]))])
    assert "| 2: compromised terminal | 0.50 | 1.000 | 1.00 |" in text  # above both genuine rows; unseen
    assert (
        "| 3: compromised card | 0.50 | 0.000 | 0.00 |" in text
    )  # below both; terminal T0 has card 2's fraud
