"""Full-text search over the log: the query syntax, the SQLite FTS5 index (a projection of
the log), the indexer that keeps it current off the append path, and the service that
answers ``log.search``."""
