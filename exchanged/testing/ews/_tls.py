"""A requests HTTPAdapter that verifies the server against one CA file (for exchangelib).

requests replaces `verify=True` by $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE when those are set, so the
adapter substitutes the CA file for any verifying value; `verify=False` stays False.
"""

from __future__ import annotations

from typing import Any

import requests.adapters


def ca_adapter_class(ca_file: str) -> type[requests.adapters.HTTPAdapter]:
    class CaFileAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("verify", True) is not False:
                kwargs["verify"] = ca_file
            return super().send(request, *args, **kwargs)

    return CaFileAdapter
