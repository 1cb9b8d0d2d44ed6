"""The jwt-bearer checks: one small unit each, ordered in pipeline.py (docs/architecture.md)."""
