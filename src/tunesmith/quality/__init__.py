"""Data quality before training: `tunesmith inspect` (see `inspection`) and the checks it runs."""

from tunesmith.quality.inspection import (
    CHECKS,
    FIXES,
    QUICK_CHECKS,
    InspectionResult,
    inspect_data,
    parse_checks,
    parse_fixes,
    severity,
    summary_lines,
    write_fixed,
)

__all__ = [
    "CHECKS",
    "FIXES",
    "QUICK_CHECKS",
    "InspectionResult",
    "inspect_data",
    "parse_checks",
    "parse_fixes",
    "severity",
    "summary_lines",
    "write_fixed",
]
