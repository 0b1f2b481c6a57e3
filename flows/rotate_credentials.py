"""Deployment entrypoint of the `rotate_credentials` maintenance flow."""

from prefect_integrations.maintenance.flows import rotate_credentials

__all__ = ["rotate_credentials"]

if __name__ == "__main__":
    print(rotate_credentials())
