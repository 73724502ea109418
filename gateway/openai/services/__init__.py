"""OpenAI services: prompt building, engine calls, response and chunk bodies. No `data:` lines."""
