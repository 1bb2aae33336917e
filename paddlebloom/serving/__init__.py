"""HTTP serving of an exported generation program: batching engine, OpenAI-compatible API, chat page."""
