"""The consumer role: a local OpenAI-compatible API that buys inference in paid sessions."""
