"""Where a client finds the API and its token: explicit values, the environment, or the local
`boxrun dev` stack's endpoints file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs


def dev_endpoints_path() -> Path:
    """The endpoints file `boxrun dev` writes (with its default data dir)."""
    return Path(platformdirs.user_data_dir("boxrun")) / "dev" / "endpoints.json"


def resolve(api_url: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Explicit values, else BOXRUN_API_URL / BOXRUN_API_TOKEN, else the local `boxrun dev` stack.
    ValueError (saying what to do) when none of them gives both."""
    api_url = api_url or os.environ.get("BOXRUN_API_URL")
    token = token or os.environ.get("BOXRUN_API_TOKEN")
    if not (api_url and token):
        path = dev_endpoints_path()
        if not path.exists():
            raise ValueError(
                "no API given: pass --api-url/--token, set BOXRUN_API_URL/BOXRUN_API_TOKEN, "
                f"or start `boxrun dev` (which writes {path})"
            )
        endpoints = json.loads(path.read_text())
        api_url, token = api_url or endpoints["api_url"], token or endpoints["token"]
    return str(api_url), str(token)
