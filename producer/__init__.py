"""The producer: builds regional snapshots and appends them to the stream."""
