"""The errors of the data layer: each names the file or folder at fault and says how to fix it.

A leaf module (no imports from metaplus) so that every data module, and code that catches these
errors, can import it without pulling in anything else.
"""

from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or one split of it) is not where the config says; the message says how to get it."""


class CorruptDatasetError(ValueError):
    """Dataset files that exist but cannot be read (a damaged archive, an empty folder, ...)."""


class CorruptImageError(CorruptDatasetError):
    """An image file that cannot be decoded; the message names the file."""


class DownloadError(RuntimeError):
    """A download that failed or does not match its published checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the extraction folder (or is a link)."""
