"""The web console: an HTML shell and vanilla-JS ES modules served by `flintlm serve` at /console
(`routes.py`), signed in through server-side sessions (`session.py`). It calls the real /v1 and
/admin APIs; it has no API of its own beyond sign-in and the served model's prices.
"""
