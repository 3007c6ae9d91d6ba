"""The store: the only module that talks to the database (SQLAlchemy 2; SQLite file by default,
PostgreSQL by URL; schema by the alembic migrations in ``aoiflow/service/migrations``).

    store = Store.sqlite("line/aoiflow.db")          # or Store("postgresql+psycopg://...")
    inspection_id = store.add_inspection(InspectionRecord(...))
"""

from .core import Store
from .engine import StoreUnavailable
from .records import (
    AlertRecord,
    DescriptorSample,
    InspectionFilter,
    InspectionRecord,
    ModelVersionRecord,
    ProcessedFile,
    ReviewActionRecord,
)

__all__ = ["AlertRecord", "DescriptorSample", "InspectionFilter", "InspectionRecord", "ModelVersionRecord",
           "ProcessedFile", "ReviewActionRecord", "Store", "StoreUnavailable"]
