"""Whatever bytes arrive, the decoder returns: every record is either kept or rejected with a reason, and
the columnar transaction decoder says what the per-record one says."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.errors import Rejected
from scorer.events.decode import decode_labels, decode_transactions, decode_transactions_per_record
from scorer.events.timestamps import parse_rfc3339_ms

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "transaction_id": json_values,
        "timestamp": st.one_of(json_values, st.just("2026-01-01T00:00:00Z")),
        "customer_id": json_values,
        "terminal_id": json_values,
        "amount": st.one_of(json_values, st.floats(min_value=0, max_value=2e9)),
        "currency": st.one_of(json_values, st.just("EUR")),
    },
)


def check_partition(values: list[bytes | None]) -> None:
    for decoded in (decode_transactions(values), decode_labels(values)):
        rejected = [i for i, r in decoded.rejected]
        assert sorted(decoded.kept.tolist() + rejected) == list(range(len(values)))
        assert all(isinstance(r, Rejected) and r.reason for _, r in decoded.rejected)
        assert len(decoded.batch) == len(decoded.kept)
    fast, ref = decode_transactions(values), decode_transactions_per_record(values)
    assert fast.kept.tolist() == ref.kept.tolist()
    assert [(i, r.reason, r.detail) for i, r in fast.rejected] == [
        (i, r.reason, r.detail) for i, r in ref.rejected
    ]
    assert fast.batch.amount.tobytes() == ref.batch.amount.tobytes()
    assert fast.batch.event_ts_ms.tolist() == ref.batch.event_ts_ms.tolist()


@given(st.lists(st.binary(max_size=200) | st.none(), max_size=8))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise(values: list[bytes | None]) -> None:
    check_partition(values)


@given(st.lists(fields, min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_arbitrary_objects_never_raise(docs: list[dict[str, object]]) -> None:
    check_partition([orjson.dumps(d) for d in docs])


@given(st.text(max_size=40))
def test_timestamp_parser_returns_or_rejects(text: str) -> None:
    try:
        assert isinstance(parse_rfc3339_ms(text), int)
    except Rejected as exc:
        assert exc.reason == "invalid_timestamp"
