"""What the load scripts set on their private backends (service.harness.private_backends)."""

# One client sends all of a load script's requests: nothing may refuse it for being one client.
# Logs are JSON lines, as in production.
LOAD_SETTINGS = {
    "RATE_LIMIT_MAX_REQUESTS": "100000000",
    "PER_CLIENT_MAX_ACTIVE_JOBS": "0",
    "SSE_MAX_STREAMS_PER_CLIENT": "1000000",
    "QUEUE_MAX_DEPTH": "100000000",
    "LOG_FORMAT": "json",
}
