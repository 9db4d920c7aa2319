"""mcpsingleton: one shared backend per stdio MCP server across every client session."""

__version__ = "0.1.0"
