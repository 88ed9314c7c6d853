"""Filters. Importing this package registers every filter in FILTERS."""
from filters.base import FILTERS, Filter, apply_filters, make_filter, merge_filter_reports, register_filter  # noqa: F401
from filters import basic  # noqa: F401  (registers)
from filters import decontam, dedup, language, length, repetition, style  # noqa: F401  (register)
