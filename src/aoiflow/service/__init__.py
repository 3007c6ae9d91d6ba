"""The line service: HTTP API, store, folder watcher and alerts.

Kept empty on purpose: importing ``aoiflow.service`` must not pull in FastAPI, SQLAlchemy or torch;
import the part you need (``aoiflow.service.store``) instead.
"""
