"""Benchmark records: medians over runs, JSON round trip, the printed table."""

from __future__ import annotations

from pathlib import Path

from flintlm.bench.report import BenchRecord, format_table, read_json, write_json


def _record() -> BenchRecord:
    runs = [
        {"output_throughput": 10.0, "peak_rss_mib": 100.0},
        {"output_throughput": 30.0, "peak_rss_mib": 120.0},
        {"output_throughput": 20.0},
    ]
    return BenchRecord("sys", "offline", {"num_prompts": 4, "input_len": 8, "output_len": 8}, runs)


def test_median_per_metric_uses_the_runs_that_have_it() -> None:
    record = _record()
    assert record.median() == {"output_throughput": 20.0, "peak_rss_mib": 110.0}
    assert record.spread("output_throughput") == (10.0, 30.0)


def test_json_round_trip_keeps_runs_errors_and_medians(tmp_path: Path) -> None:
    failed = BenchRecord("peer", "offline", {}, error="ImportError: no llama_cpp")
    path = tmp_path / "r.json"
    write_json(path, [_record(), failed], {"note": "x"})
    meta, records = read_json(path)
    assert meta["note"] == "x" and "load_average_end" in meta
    assert records[0].runs == _record().runs
    assert records[1].error == "ImportError: no llama_cpp"


def test_table_shows_median_spread_and_errors() -> None:
    failed = BenchRecord("peer", "offline", {}, error="ImportError: no llama_cpp")
    table = format_table([_record(), failed])
    assert "20.0" in table and "10.0-30.0" in table
    assert "peer: ImportError: no llama_cpp" in table
