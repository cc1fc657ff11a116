"""Data: parquet tables → seeded splits of modality views (text, image, audio), and the bundle check."""
