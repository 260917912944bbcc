"""Version 1: the schema of taskmgr before the schema had a version.

A database without ``taskmgr_schema`` but with ``taskmgr_task`` is taken for
version 1 and brought up to it here: the tables that are missing are made, the
indexes of earlier versions are dropped (the pending index and the
(status, graphspace, graph, id) index replaced them), and the task row gets
its ``history`` column (earlier versions kept the history in a table).
"""

from peewee import SQL, BigAutoField, BigIntegerField, DoubleField, IntegerField, Model, NodeList, TextField


class _TaskIdField(BigAutoField):
    def ddl(self, ctx):
        node = super().ddl(ctx)
        if self.model._meta.database.__class__.__name__.endswith("SqliteDatabase"):
            return NodeList((node, SQL("AUTOINCREMENT")))
        return node


def up(migrator, db):
    class TaskRecord(Model):  # the class names make the index names: taskrecord_...
        id = _TaskIdField()
        graphspace = TextField()
        graph = TextField()
        type = TextField()
        name = TextField()
        status = TextField()
        progress = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])
        created = BigIntegerField()
        updated = BigIntegerField()
        result = TextField(null=True)
        retries = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
        callable = TextField()
        input = TextField(null=True)
        owner = TextField(null=True)
        run_at = BigIntegerField(null=True)
        ran = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
        restores = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
        max_retries = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
        retry_delay = DoubleField(default=1.0, constraints=[SQL("DEFAULT 1.0")])
        history = TextField(null=True)

        class Meta:
            database = db
            table_name = "taskmgr_task"
            indexes = ((("status", "graphspace", "graph", "id"), False), (("graphspace", "graph", "id"), False))

    class HistoryRecord(Model):
        id = BigAutoField()
        task = BigIntegerField(column_name="task_id")
        from_status = TextField(null=True)
        to_status = TextField()
        at = BigIntegerField()

        class Meta:
            database = db
            table_name = "taskmgr_history"
            indexes = ((("task", "id"), False),)

    class NodeRecord(Model):
        node = TextField(primary_key=True)
        host = TextField()
        pid = IntegerField()
        started = BigIntegerField()
        heartbeat = BigIntegerField()

        class Meta:
            database = db
            table_name = "taskmgr_node"

    db.create_tables([TaskRecord, HistoryRecord, NodeRecord], safe=True)
    if "history" not in {c.name for c in db.get_columns("taskmgr_task")}:
        migrator.migrate(migrator.add_column("taskmgr_task", "history", TextField(null=True)))
    q = db.quote[0] + "%s" + db.quote[1]
    db.execute_sql(f"CREATE INDEX IF NOT EXISTS {q % 'taskmgr_task_pending_run_at'} ON {q % 'taskmgr_task'} "
                   f"({q % 'run_at'}) WHERE {q % 'status'} = 'pending'")
    for old in ("taskrecord_status_run_at", "taskrecord_graphspace_graph_status_id", "taskrecord_status_id"):
        db.execute_sql(f"DROP INDEX IF EXISTS {q % old}")
