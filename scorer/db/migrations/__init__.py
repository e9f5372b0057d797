"""The schema's migrations, applied in number order (scorer/db/migrate.py): NNNN_name.sql, never edited once
released; a change is a new file."""
