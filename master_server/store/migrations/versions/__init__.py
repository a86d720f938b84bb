"""Alembic revisions, oldest first; each file is one schema step."""
