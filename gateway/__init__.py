"""The gateway: settings, the OpenAI face, SSE, usage, and the composition root (server.py)."""
