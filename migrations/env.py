"""Alembic environment: plain SQL revisions that apply files from sql/ (no ORM metadata)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from migrations.sqlfiles import sqlalchemy_url

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)

with engine.connect() as connection:
    # alembic keeps its version table inside the schema, so the schema must exist first
    connection.execute(text("CREATE SCHEMA IF NOT EXISTS noetl"))
    connection.commit()
    context.configure(
        connection=connection,
        version_table_schema="noetl",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
