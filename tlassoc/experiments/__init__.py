"""One module per experiment; each returns a result object and can write JSON and figures."""
