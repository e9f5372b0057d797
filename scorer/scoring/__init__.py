"""The scorer: the Kafka-free core (batch -> decisions and dead letters), customer state snapshots, the
commit sequence, and `scorer run`'s loop around them."""
