"""Data: parquet tables → seeded splits of modality views (text, image, audio), and the bundle check."""

from fusebench.data import retrieval as _retrieval  # noqa: F401,E402 - registers the flickr8k_retrieval builder
