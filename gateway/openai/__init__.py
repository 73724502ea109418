"""The OpenAI face under /openai/v1. Never imports compat/."""
