"""Code shared by producer and consumer: the snapshot schema and friends."""
