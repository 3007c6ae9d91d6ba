"""Alembic migrations of the store's schema, shipped inside the package so that an installed
aoiflow can migrate its database (``aoiflow.service.store.engine.upgrade_to_head``)."""
