"""Transport protocols: UDP and TCP (``tcp/``)."""
