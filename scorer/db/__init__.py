"""PostgreSQL: the embedded server, connections and their errors, deadlines on calls, the schema's migrations and
the statements the store writes with; the only code that knows SQL.

Importing the package imports no driver: `embedded` needs only the `postgres` extra (the server binaries),
the rest needs the `store` extra (psycopg).
"""
