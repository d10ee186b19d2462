"""One module per pipeline stage; each exposes a frozen config dataclass and `run(cfg)`."""
