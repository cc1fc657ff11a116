"""Built-in suites (YAML)."""
