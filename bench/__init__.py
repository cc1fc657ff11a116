"""fusebench: a harness that compares multimodal fusion strategies under one fair protocol."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
