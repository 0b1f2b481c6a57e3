"""prefect-integrations."""
