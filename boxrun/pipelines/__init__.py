"""Pipelines: multi-step workflow definitions (parsed, validated and expanded here; run by
workflows/pipeline.py)."""
