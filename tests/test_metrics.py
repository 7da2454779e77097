"""The counter names: built from a reason code by one function, parsed back by one."""
import pytest

from transforms import metrics
from transforms.reasons import REASONS, Reason


def test_every_reason_has_a_counter_that_parses_back():
    for reason in Reason:
        name = metrics.error_counter(reason)
        assert name == metrics.error_counter(reason.value)  # a code as text names the same counter
        assert metrics.error_reason(name) == reason.value
    assert {metrics.error_reason(metrics.error_counter(code)) for code in REASONS} == set(REASONS)


def test_an_unknown_code_has_no_counter():
    with pytest.raises(ValueError):
        metrics.error_counter("no_such_reason")


def test_other_counters_are_not_errors():
    counters = {metrics.ROWS_READ: 7, metrics.ROWS_ENCODED: 4, metrics.error_counter(Reason.BAD_ZLIB): 2,
                metrics.error_counter(Reason.EMPTY_CELL): 1}
    assert metrics.error_reason(metrics.ROWS_READ) is None
    assert metrics.errors_by_reason(counters) == {"bad_zlib": 2, "empty_cell": 1}
    assert list(metrics.errors_by_reason(counters)) == ["bad_zlib", "empty_cell"]
    assert metrics.error_total(counters) == 3


def test_counters_from_the_output_shards_add_up():
    counters = metrics.counters_from_counts(10, {"inference_failed": 3, "bad_hex": 2})
    assert counters[metrics.ROWS_READ] == 15
    assert counters[metrics.ROWS_DECODED] == 13  # the model's failures were decoded first
    assert counters[metrics.ROWS_ENCODED] == 10
    assert metrics.errors_by_reason(counters) == {"bad_hex": 2, "inference_failed": 3}
