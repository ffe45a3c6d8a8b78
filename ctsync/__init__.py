"""ctsync: Segment event exports into CleverTap, in batches."""

__version__ = "0.2.0"
