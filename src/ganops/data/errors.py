"""Errors raised by the data stages (prepare, validate); each message says what was wrong and what to do."""

from __future__ import annotations


class DataError(ValueError):
    """A data source is missing, malformed or unusable; nothing was written."""


class DataValidationError(DataError):
    """The prepared data failed one or more expectations of the validation suite.

    Attributes:
        failures: one dict per failed expectation (``name``, ``expectation``, ``unexpected_count``, ``examples``).
        report_path: the ``result.json`` written before raising.
    """

    def __init__(self, message: str, failures: list[dict] | None = None, report_path: str | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []
        self.report_path = report_path
