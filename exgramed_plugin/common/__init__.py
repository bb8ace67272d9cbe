"""What every floor of the package shares: JSON I/O, token strings, weight-file checks, the OpenAI-compatible client, concurrency, log tails. Imports nothing else of the package."""
