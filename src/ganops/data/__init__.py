"""Data stages: read a source (Fashion-MNIST IDX files or an image folder), write the prepared arrays, validate them.

Importing this package is cheap: Great Expectations is imported inside :func:`ganops.data.validate.validate` only.
"""

from ganops.data.errors import DataError, DataValidationError

__all__ = ["DataError", "DataValidationError"]
