"""Run orchestration: a suite → cells (dataset × strategy) → search, evaluation seeds, records."""
