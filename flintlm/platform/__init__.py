"""The provider's business: API keys, rate limits and quotas, pricing, the usage ledger and
guardrails. Plain Python + SQLAlchemy (+ Redis for shared limits); never imports torch, FastAPI
or the engine. The HTTP layer holds one `flintlm.platform.service.Platform`; see its docstring
for the wiring. Modules are always imported by absolute name, so this package cannot shadow the
standard library's `platform`.
"""
