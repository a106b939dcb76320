"""Download jobs: their Redis schema, how they are enqueued, run and reported."""
