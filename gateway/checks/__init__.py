"""The jwt-bearer checks (design stages 5-14): one small unit each, ordered in pipeline.py."""
