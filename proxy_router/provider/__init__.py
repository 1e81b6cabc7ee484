"""The provider role: sells a model server's inference over MOR-RPC in paid sessions."""
