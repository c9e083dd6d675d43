"""Operations: the team stack of servers s2s runs against (PostgreSQL, S3, MLflow, Prefect), not a flow."""
