"""PostgreSQL: the embedded server, connections and their errors, deadlines on calls; the only code that knows SQL.

Importing the package imports no driver: `embedded` needs only the `postgres` extra (the server binaries),
`connect` and `deadline` need the `store` extra (psycopg).
"""
