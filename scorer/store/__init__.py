"""`scorer store`: the transactions, decisions, labels and dead letters from Kafka into PostgreSQL, exactly once."""
