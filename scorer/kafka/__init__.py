"""Everything that speaks to Kafka besides the loops: the producer sink, admin and topics, state-topic readers,
the control topic and the dead-letter record format."""
