"""Python client of the modelserve HTTP API: `Client` (sync) and `AsyncClient`, on httpx.

Results are the pydantic models of `modelserve_client.schemas`, the same classes the server
answers with; a 4xx/5xx raises `ModelServeError` carrying the server's message, status and
request id. Depends on httpx and pydantic only: no torch, no server code.

    from modelserve_client import Client
    with Client("http://localhost:8000") as c:
        print(c.classify("cat.jpg").predictions[0].label)
"""

from modelserve_client._async import AsyncClient
from modelserve_client._calls import RETRY_STATUSES, ImageInput, ModelServeError
from modelserve_client._sync import Client

__version__ = "0.1.0"
__all__ = [
    "RETRY_STATUSES",
    "AsyncClient",
    "Client",
    "ImageInput",
    "ModelServeError",
    "__version__",
]
