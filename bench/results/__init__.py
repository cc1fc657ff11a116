"""Results: the record schema, run provenance, and the statistics (intervals, paired tests) over records."""
