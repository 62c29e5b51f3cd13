"""The manager's HTTP API (aiohttp): app factory, routes, OpenAPI document."""
