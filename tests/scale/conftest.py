"""The scale tests use the platform tests' real PostgreSQL and Redis fixtures."""

from tests.platform.conftest import redis_url

__all__ = ["redis_url"]
