"""`scorer score`'s files: CSV and JSON lines refused for the same things with the same reasons, a CSV
header that cannot give records and an output that cannot be written refused before any work."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from scorer.cli.main import main
from scorer.events.decode import REQUIRED_FIELDS

GOOD = {
    "transaction_id": "t1",
    "customer_id": "C1",
    "terminal_id": "T1",
    "amount": 40.5,
    "timestamp": "2026-03-01T10:00:00Z",
    "currency": "EUR",
    "channel": "pos",
    "merchant_category": "5411",
}
COLUMNS = list(GOOD)
NOT_UTF8 = b"T\xff1"

# (what is wrong, the fields that differ from GOOD (None: absent, an empty cell), the reason both give)
BAD = [
    ("no customer", {"customer_id": None}, "missing_field"),
    ("no amount", {"amount": None}, "missing_field"),
    ("amount as text", {"amount": "lots"}, "wrong_type"),
    ("amount not a JSON number", {"amount": "+5"}, "wrong_type"),
    ("negative amount", {"amount": -1}, "invalid_amount"),
    ("amount too large", {"amount": 2e9}, "invalid_amount"),
    ("no such day", {"timestamp": "2026-02-30T10:00:00Z"}, "invalid_timestamp"),
    ("local time", {"timestamp": "2026-03-01T10:00:00"}, "invalid_timestamp"),
    ("lower-case currency", {"currency": "eur"}, "invalid_currency"),
    ("id too long", {"transaction_id": "x" * 129}, "field_too_long"),
    ("channel too long", {"channel": "c" * 65}, "field_too_long"),
    ("a byte that is not UTF-8", {"terminal_id": NOT_UTF8}, "invalid_utf8"),
    ("record too large", {"merchant_category": "m" * 70_000}, "oversized_value"),
]


def jsonl_line(fields: dict[str, object]) -> bytes:
    doc = {k: ("@@" if v == NOT_UTF8 else v) for k, v in {**GOOD, **fields}.items() if v is not None}
    return orjson.dumps(doc).replace(b"@@", NOT_UTF8)


def csv_line(fields: dict[str, object]) -> bytes:
    cells = [{**GOOD, **fields}[c] for c in COLUMNS]
    return b",".join(c if isinstance(c, bytes) else b"" if c is None else str(c).encode() for c in cells)


def score(tmp_path: Path, source: Path, *flags: str) -> tuple[int, list[dict[str, object]], list[str]]:
    """(exit code, the rejects file's records, the decisions' transaction ids) of `scorer score`."""
    out, rejects = tmp_path / f"{source.name}.out", tmp_path / f"{source.name}.rejects"
    code = main(["score", "--input", str(source), "--output", str(out), "--rejects", str(rejects), *flags])
    if code != 0:
        return code, [], []
    decided = [orjson.loads(line)["transaction_id"] for line in out.read_bytes().splitlines()]
    return code, [orjson.loads(line) for line in rejects.read_bytes().splitlines()], decided


def test_csv_and_json_lines_refuse_the_same_records_with_the_same_reasons(tmp_path: Path) -> None:
    records = [{}, *(fields for _, fields, _ in BAD), {"transaction_id": "t2"}]
    jsonl, csv = tmp_path / "in.jsonl", tmp_path / "in.csv"
    jsonl.write_bytes(b"\n".join(map(jsonl_line, records)) + b"\n")
    csv.write_bytes(b"\n".join([",".join(COLUMNS).encode(), *map(csv_line, records)]) + b"\n")
    results = {path.suffix: score(tmp_path, path) for path in (jsonl, csv)}
    expected = [reason for _, _, reason in BAD]
    for suffix, (code, rejects, decided) in results.items():
        assert code == 0, suffix
        assert [r["reason"] for r in rejects] == expected, suffix
        assert decided == ["t1", "t2"], suffix
    header = 1  # the CSV's records start on line 2
    assert [r["line"] for r in results[".csv"][1]] == [r["line"] + header for r in results[".jsonl"][1]]


def test_a_spreadsheets_byte_order_mark_is_no_part_of_the_first_column(tmp_path: Path) -> None:
    csv, jsonl = tmp_path / "excel.csv", tmp_path / "bom.jsonl"
    csv.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([",".join(COLUMNS).encode(), csv_line({})]) + b"\r\n")
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl_line({}) + b"\n")
    for source in (csv, jsonl):
        assert score(tmp_path, source) == (0, [], ["t1"]), source


@pytest.mark.parametrize(
    "header, message",
    [
        (
            "transaction_id,customer_id,amount,channel",
            f"the header has no column terminal_id, timestamp (required: {', '.join(REQUIRED_FIELDS)})",
        ),
        (",".join([*COLUMNS, "amount"]), "the header names amount more than once (one column per field)"),
        ("", "empty: a CSV file starts with a header row naming its columns"),
    ],
    ids=["missing columns", "a repeated column", "no header"],
)
def test_a_csv_header_that_cannot_give_records_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str, message: str
) -> None:
    source = tmp_path / "in.csv"
    rows = "t1,C1,T1,40,2026-03-01T10:00:00Z\n" * 3
    source.write_text(f"{header}\n{rows}" if header else "")
    history = tmp_path / "no-history"  # would fail if it were read: the header is refused first
    out = tmp_path / "out.jsonl"
    code = main(["score", "--input", str(source), "--output", str(out), "--history", str(history)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    where = f"{source}:1" if header else str(source)
    assert err.startswith(f"scorer: error: {where}: {message}"), err
    assert not out.exists()


def test_a_row_with_more_cells_than_the_header_or_broken_quoting_is_a_bad_line(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = [csv_line({}) + b",surplus", csv_line({"transaction_id": "t2"}), b't3,"C1,T1', b""]
    source.write_bytes(b"\n".join([",".join(COLUMNS).encode(), *rows]))
    code, rejects, decided = score(tmp_path, source)
    assert code == 0 and decided == ["t2"]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "invalid_csv"), (4, "invalid_csv")]
    assert rejects[0]["detail"] == "9 cells, the header names 8 columns"
    assert rejects[1]["detail"] == "unexpected end of data"  # the quote opened on line 4 never closes


@pytest.mark.parametrize("flag", ["--output", "--rejects"])
@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, where: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl_line({}) + b"\n")
    target = tmp_path / "nowhere" / "out.jsonl" if where == "missing directory" else tmp_path
    paths = {"--output": tmp_path / "out.jsonl", "--rejects": tmp_path / "rejects.jsonl", flag: target}
    args = [f for name, path in paths.items() for f in (name, str(path))]
    code = main(["score", "--input", str(source), *args, "--history", str(tmp_path / "no-history")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    why = f"cannot write there (no directory {target.parent})" if target != tmp_path else "is a directory"
    assert err.startswith(f"scorer: error: {flag} {target}: {why}"), err
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".*"))
