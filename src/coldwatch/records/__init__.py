"""GMP records: batches, shipments and their reports (and, from other branches, the shared report pieces)."""
