"""ftserve: a self-hosted fine-tuning service that speaks OpenAI's API. `core` is the ground floor every other
package stands on; `control` is the api role; `training`, `worker`, `engine`, `serving` and `models` the rest
(docs/architecture.md)."""
