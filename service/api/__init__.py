"""Operator HTTP API (FastAPI)."""
