"""PostgreSQL: connections, migrations and the statements the store writes with: the only code that knows SQL."""
