"""What every role shares and nothing else: settings, domain errors, ids, job status, metrics, storage, the OpenAI
wire models and the JSONL readers. It imports no other ftserve package."""
