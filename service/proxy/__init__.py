"""The proxy bundle: timeout profiles (proxy/profiles.toml), the budget check, config rendering."""
