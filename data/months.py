"""Months as integers: months since 1970-01, the one calendar index of vintages, lookback windows and
months on book.

Two forms of the same count, kept together: `month_number` for arrays of dates (numpy's
`datetime64[M]` counts months from the same epoch) and `months_since_1970` / `month_of` for a year and
month, which the request parser calls per parsed value where building an array would cost more than
the arithmetic. `tests/test_features.py` checks that the two agree.
"""

from __future__ import annotations

import datetime as dt
from typing import TypeVar

import numpy as np
import pandas as pd

EPOCH_YEAR = 1970  # month 0 is January 1970, as for numpy's datetime64[M]
Months = TypeVar("Months", int, np.ndarray)


def months_since_1970(year: Months, month: Months) -> Months:
    """Months since 1970-01 of calendar month `month` (1..12) of `year` (ints, or integer arrays)."""
    return (year - EPOCH_YEAR) * 12 + month - 1


def month_of(date: dt.date) -> int:
    """Months since 1970-01 of the month `date` falls in."""
    return months_since_1970(date.year, date.month)


def month_number(values: pd.Series | np.ndarray) -> np.ndarray:
    """Dates (datetime64 or ISO strings) -> months since 1970-01 as int64."""
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.datetime64):
        arr = pd.to_datetime(pd.Series(values), errors="raise").to_numpy()
    return arr.astype("datetime64[M]").astype(np.int64)
