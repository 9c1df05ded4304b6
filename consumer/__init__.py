"""The consumer group: read in batches, deduplicate, persist, acknowledge, replay."""
