"""The HTTP API: app wiring (app.py), middleware, routes, and the OpenAPI document."""
