"""HTTP routers, one module per OpenAI resource."""
