"""The Python client at its historical import path: the `modelserve_client` package.

`pip install ./clients/python` installs that package alone (httpx and pydantic, no torch);
the server depends on it, so `app.client` is there wherever the server is.
"""

from modelserve_client import AsyncClient, Client, ImageInput, ModelServeError

__all__ = ["AsyncClient", "Client", "ImageInput", "ModelServeError"]
