"""Deployment entrypoint of the `health_check` maintenance flow."""

import asyncio

from prefect_integrations.maintenance.flows import health_check

__all__ = ["health_check"]

if __name__ == "__main__":
    print(asyncio.run(health_check()))
