"""Alembic environment and revisions of the master's database (run by ``SQLStore.migrate``)."""
