"""Local persistent state (SQLite): the market checkpoint, sessions, usage."""
