"""Deployment entrypoint of the `refresh_tokens` maintenance flow."""

from prefect_integrations.maintenance.flows import refresh_tokens

__all__ = ["refresh_tokens"]

if __name__ == "__main__":
    print(refresh_tokens())
