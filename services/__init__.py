"""streamscore."""
