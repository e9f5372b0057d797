"""The one feature engine (training and serving), its day-bucket window state and the state rows' wire format."""
