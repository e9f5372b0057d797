"""`scorer retrain`: continuous learning from the store, shadowed and promoted on live evidence."""
