"""One module per measured scenario; each has run(ctx) -> dict (raw rounds and a summary)."""
