"""Filters. Importing this package registers every filter in FILTERS."""
from distill.filters.base import FILTERS, Filter, apply_filters, make_filter, merge_filter_reports, register_filter  # noqa: F401
from distill.filters import basic  # noqa: F401  (registers)
from distill.filters import decontam, dedup, language, length, repetition, style  # noqa: F401  (register)
