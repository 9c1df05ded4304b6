"""regionstream: regional intelligence snapshots streamed through Redis Streams."""

__version__ = "0.1.0"
