"""The numbered migrations of the store's schema, run by peewee's ``playhouse.migrations.Runner``.

Each file ``NNNN_name.py`` defines ``up(migrator, db)``: it brings a database
of version NNNN-1 to version NNNN. The rules (see :mod:`taskmgr._schema`):

- a migration declares frozen copies of what it needs (table and column
  names, models), never the application's current models;
- it is idempotent: run on a database that already has some of its changes
  (an interrupted upgrade, a file opened by a pre-release), it completes them;
- it runs in the transaction of the open, under the write lock, and is
  recorded in ``taskmgr_schema`` in that same transaction;
- it never edits a migration that shipped: a change is a new file.

A new database is created at the latest version from the current models, with
every migration recorded as applied (``tests/test_schema.py`` checks that a
database migrated from version 1 has exactly the schema of a new one).
"""
