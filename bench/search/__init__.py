"""Search: optuna studies under an equal trial budget, their storages, and distributed workers."""
