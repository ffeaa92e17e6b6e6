"""Wire types mirroring OpenAI's objects, one module per resource."""
