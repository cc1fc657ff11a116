"""End-to-end fine-tuning: encoder towers trained with the fusion model (docs/finetune.md)."""
