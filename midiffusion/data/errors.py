"""The one error type of the data layer: a single line naming the source and what to do."""

from __future__ import annotations


class DataError(Exception):
    """A data source is missing, corrupt or does not match its pinned checksum.

    The message is one line that names the source and says what to do about it; the command
    line prints it as is and exits non-zero.
    """
