"""The spotinfer routing strategy in LiteLLM's proxy, from its config.yaml.

    litellm_settings:
      callbacks: ["spotinfer.litellm_proxy.routing"]

The proxy loads ``routing`` as a callback; before the first request it
routes (and again whenever the proxy builds a new Router, as after a
config reload) it plugs a :class:`spotinfer.litellm.SpotinferRouting` into
the proxy's Router. The library's configuration is the JSON file named by
``$SPOTINFER_CONFIG`` (none: the defaults); each deployment's pool and
price are in its ``model_info.spotinfer``, as for a Router. A deployment
that cannot be read (a bad setting) or that the library refuses is
logged and left out, at the install as at every later sync.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Optional

from .litellm import CustomLogger, SpotinferRouting


class ProxyRouting(CustomLogger):  # type: ignore[misc]
    """A proxy callback that keeps a SpotinferRouting on the proxy's Router."""

    def __init__(self) -> None:
        CustomLogger.__init__(self)
        self._lock = threading.Lock()
        self.strategy: Optional[SpotinferRouting] = None

    def _config(self) -> Any:
        path = os.environ.get("SPOTINFER_CONFIG")
        if not path:
            return None
        import pathlib
        return pathlib.Path(path)

    def ensure(self) -> Optional[SpotinferRouting]:
        """The strategy on the proxy's current Router, installed if needed."""
        from litellm.proxy import proxy_server
        router = getattr(proxy_server, "llm_router", None)
        if router is None:
            return None
        with self._lock:
            current = self.strategy
            if current is not None and current.router is router:
                return current
            # Lenient: a deployment the running strategy logged and left
            # out is left out of the new Router's strategy too, rather than
            # failing every request.
            self.strategy = SpotinferRouting.install(router, self._config(),
                                                     strict_deployments=False)
        if current is not None:
            current.close()
        return self.strategy

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any,
                                  data: dict, call_type: Any, **_: Any) -> Any:
        # Installing waits for the replicas' first load readings: off the
        # proxy's event loop. Closing the old strategy waits at most its
        # close_wait_s; its threads are joined in a thread of its own.
        from litellm.proxy import proxy_server
        current = self.strategy
        if current is None or current.router is not getattr(proxy_server, "llm_router", None):
            await asyncio.to_thread(self.ensure)
        return data


#: The object config.yaml names.
routing = ProxyRouting()

__all__ = ["ProxyRouting", "routing"]
