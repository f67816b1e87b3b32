"""The HTTP API's request and response bodies, defined once in the client package.

`modelserve_client.schemas` (clients/python) holds them: the server validates and answers
with the very classes the client parses into. This module re-exports that module's public
names, so the server's routes import them from inside `app`.
"""

from modelserve_client.schemas import *  # noqa: F403
