"""Where the SDK finds the API and its token, in this order:

1. the arguments (`AsyncClient(url=..., token=...)`);
2. the environment: `BOXRUN_URL` / `BOXRUN_TOKEN` (the older `BOXRUN_API_URL` / `BOXRUN_API_TOKEN`
   are read too);
3. the profile that `boxrun login` saves (`save_profile`): `$XDG_CONFIG_HOME/boxrun/profile.json`,
   by default `~/.config/boxrun/profile.json`, mode 0600, `{"url": ..., "token": ...}`;
4. a running `boxrun dev` stack's endpoints file.

Each of url and token comes from the first source that has it, with one guard: a token is never
taken from a profile or a dev stack whose URL is not the URL already chosen, so a token cannot
be sent to a server it was not made for."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from boxrun.client.credentials import dev_endpoints_path
from boxrun.errors import InvalidInput

PROFILE_NAME = "profile.json"


def profile_path() -> Path:
    """The profile file: `$XDG_CONFIG_HOME/boxrun/profile.json` (`~/.config/boxrun/profile.json`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "boxrun" / PROFILE_NAME


def _norm(url: str) -> str:
    return url.rstrip("/")


def save_profile(url: str, token: str, *, path: Path | None = None) -> Path:
    """Save the API's URL and a token for later clients (what `boxrun login` does); the file is
    created with mode 0600 (its folder 0700) and replaced atomically. Returns its path."""
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"the URL must start with http:// or https://, not {url[:80]!r}", field="url")
    if not token:
        raise InvalidInput("the token is empty", field="token")
    target = path or profile_path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"url": _norm(url), "token": token}, out)
            out.write("\n")
        os.chmod(tmp, 0o600)  # a umask cannot widen it, an existing tmp file is narrowed
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _read(path: Path, url_key: str, token_key: str) -> tuple[str | None, str | None]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field=str(path)) from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path} is not a JSON object", field=str(path))
    url, token = raw.get(url_key), raw.get(token_key)
    return (url if isinstance(url, str) and url else None, token if isinstance(token, str) and token else None)


def load_profile(path: Path | None = None) -> tuple[str | None, str | None]:
    """The saved (url, token), each None when absent."""
    return _read(path or profile_path(), "url", "token")


@dataclass(frozen=True)
class Connection:
    """The resolved API address and token, and where each came from (for error messages)."""

    url: str
    token: str
    url_from: str
    token_from: str


def resolve(url: str | None = None, token: str | None = None) -> Connection:
    """The API URL and token by the order above; InvalidInput saying what to do when none gives
    both."""
    sources: list[tuple[str, str | None, str | None]] = [
        ("arguments", url, token),
        ("environment", os.environ.get("BOXRUN_URL"), os.environ.get("BOXRUN_TOKEN")),
        ("environment", os.environ.get("BOXRUN_API_URL"), os.environ.get("BOXRUN_API_TOKEN")),
    ]
    chosen_url: tuple[str, str] | None = None
    chosen_token: tuple[str, str] | None = None
    for name, u, t in sources:
        if chosen_url is None and u:
            chosen_url = (_norm(u), name)
        if chosen_token is None and t:
            chosen_token = (t, name)
    for name, path, keys in (
        ("profile", profile_path(), ("url", "token")),
        ("dev stack", dev_endpoints_path(), ("api_url", "token")),
    ):
        if chosen_url is not None and chosen_token is not None:
            break
        u, t = _read(path, *keys)
        if u is None:
            continue
        if chosen_url is None:
            chosen_url = (_norm(u), f"{name} {path}")
        if chosen_token is None and t and _norm(u) == chosen_url[0]:
            chosen_token = (t, f"{name} {path}")
    if chosen_url is None or chosen_token is None:
        missing = (
            "URL and token"
            if chosen_url is None and chosen_token is None
            else ("URL" if chosen_url is None else f"token for {chosen_url[0]}")
        )
        raise InvalidInput(
            f"no API {missing}: pass url=/token=, set BOXRUN_URL/BOXRUN_TOKEN, run `boxrun login` "
            f"(it saves {profile_path()}), or start `boxrun dev` (it writes {dev_endpoints_path()})",
            field="url" if chosen_url is None else "token",
        )
    return Connection(chosen_url[0], chosen_token[0], chosen_url[1], chosen_token[1])
