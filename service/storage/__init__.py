"""S3-compatible object storage, spoken only through boto3."""
