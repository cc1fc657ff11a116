"""YAML configs → frozen dataclasses: dataset and suite definitions, their catalog and include rules."""
