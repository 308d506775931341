"""The PostgreSQL edge: one connection with a deadline on every answer (connection), the
errors every call may raise and what each tells the caller (errors), the statements of one
flush (flush) and the Store, whose methods are each one transaction (store). It imports the
core, never the loop, the flusher or app."""
