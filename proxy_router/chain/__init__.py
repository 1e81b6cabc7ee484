"""The chain layer: contract calls and transactions, market data types, the event index."""
