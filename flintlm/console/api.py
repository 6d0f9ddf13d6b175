"""The console's own JSON endpoints under /console/api, as one router for the app to include:
the live snapshot (`live.py`) and the data export (`data.py`)."""

from __future__ import annotations

from fastapi import APIRouter

from flintlm.console import data, live

router = APIRouter()
router.include_router(live.router)
router.include_router(data.router)
