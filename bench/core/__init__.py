"""The core every layer may import: errors, registries, search-space declarations, metrics, paths, file io."""
