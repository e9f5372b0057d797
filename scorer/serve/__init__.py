"""`scorer serve`: the HTTP scoring API, answered by the stream's scorers through Kafka request-reply."""
