"""Input events: Kafka values -> columnar batches, or Rejected(reason). The only code that parses input.

- `batches`: TransactionBatch / LabelBatch, the columns every later stage works on;
- `decode`: the decoder, exactly the contract of schemas/*.schema.json, with a stable reason per record;
- `timestamps`: RFC 3339 <-> ms, and the NEVER sentinel;
- `files`: the JSON-lines data files of simulate / train / evaluate.
"""
