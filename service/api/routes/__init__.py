"""Route handlers, one module per area; app.py lists them all."""
