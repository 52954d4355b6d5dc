"""Readers of a finished output folder: the audit, the HTML report, the FAISS index and search."""
