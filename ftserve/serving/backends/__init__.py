"""Who generates for a base: ftserve's own engine (builtin) or vLLM servers (vllm), behind one interface."""
