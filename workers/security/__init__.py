"""Who may talk to infersched's gRPC servers, and how clients prove it.

`tls`: a cluster CA and certificates made with `cryptography`; `tokens`: bearer
tokens (constant-time checks, a server interceptor, stubs that send them);
`plane`: the worker plane's per-cluster credentials (scheduler and peers);
`peers`: which addresses a worker may hand KV to; `service`: TLS and tokens
for `serve`'s clients (Scheduler gRPC, metrics) and for `replay`/`stats`.
"""
