"""`--front-ends N`: N app processes behind one port — the supervisor (`frontends`), HAProxy's configuration
(`haproxy`) and process (`haproxy_process`), and what child processes share (`children`: relay, restart backoff).
"""
