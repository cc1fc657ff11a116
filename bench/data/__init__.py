"""Data: parquet tables → seeded splits of modality views (text, image, audio), and the bundle check."""

from fusebench.data import generic as _generic  # noqa: F401 - registers the table and matching builders
from fusebench.data import retrieval as _retrieval  # noqa: F401 - registers the flickr8k_retrieval builder
