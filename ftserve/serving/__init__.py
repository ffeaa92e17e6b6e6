"""The inference HTTP role: completions and chat routes over the engine, the Batch API's and the Evals API's
runners and the deleted-model sweep; `serving.app.install` adds it to an app, with the control plane's ports
(serving/ports)."""
