"""Cases: the analysts' unit of work (a card), between the console and the database."""
