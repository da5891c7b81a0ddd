"""Temporal client set-up shared by the API, the worker, the dev stack and tests (one data converter
everywhere; TLS, mTLS and API keys from Settings)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, Interceptor, TLSConfig
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from boxrun.constants import SA_BOX_ID, SA_JOB_STATE, SA_OWNER, SA_PIPELINE_ID, SEARCH_ATTRIBUTES

if TYPE_CHECKING:
    from boxrun.settings import Settings

log = logging.getLogger(__name__)

KEY_JOB_STATE = SearchAttributeKey.for_keyword(SA_JOB_STATE)
KEY_BOX_ID = SearchAttributeKey.for_keyword(SA_BOX_ID)
KEY_OWNER = SearchAttributeKey.for_keyword(SA_OWNER)
KEY_PIPELINE_ID = SearchAttributeKey.for_keyword(SA_PIPELINE_ID)

# Exceptions that mean a bug in workflow code. Given as a workflow's failure_exception_types they
# fail the workflow instead of its task (which Temporal retries forever). Not `Exception`: that
# would include NondeterminismError, and a deploy that breaks determinism should leave running
# workflows waiting for a fixed worker, not fail them all.
BUG_TYPES: Sequence[type[BaseException]] = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    LookupError,
    NameError,
    RuntimeError,
    TypeError,
    ValueError,  # pydantic's ValidationError included
)


class TemporalConfigError(ValueError):
    """The Temporal connection settings cannot work (a certificate file missing, a key without
    its certificate, TLS switched off under an API key); raised at start, naming the setting."""


def _read_pem(setting: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TemporalConfigError(f"BOXRUN_{setting.upper()}: cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TemporalConfigError(f"BOXRUN_{setting.upper()}: {path} holds no PEM block (-----BEGIN ...)")
    return data


def tls_config(settings: Settings) -> TLSConfig | bool:
    """What `Client.connect(tls=...)` gets from the temporal_tls* settings: False (plaintext),
    True (TLS trusting the system's roots) or a TLSConfig with the files' contents. The files are
    read here, once, so a bad path stops the process at start with the setting's name."""
    files = {
        "temporal_tls_ca_file": settings.temporal_tls_ca_file,
        "temporal_tls_cert_file": settings.temporal_tls_cert_file,
        "temporal_tls_key_file": settings.temporal_tls_key_file,
    }
    wanted = [name for name, path in files.items() if path is not None]
    if settings.temporal_tls_server_name:
        wanted.append("temporal_tls_server_name")
    if settings.temporal_tls is False:
        if settings.temporal_api_key:
            raise TemporalConfigError(
                "BOXRUN_TEMPORAL_API_KEY is set but BOXRUN_TEMPORAL_TLS is false: an API key is only sent over TLS"
            )
        if wanted:
            raise TemporalConfigError(
                f"BOXRUN_TEMPORAL_TLS is false but {', '.join('BOXRUN_' + n.upper() for n in wanted)} set: "
                "unset them or switch TLS on"
            )
        return False
    if (settings.temporal_tls_cert_file is None) != (settings.temporal_tls_key_file is None):
        raise TemporalConfigError(
            "mTLS needs both BOXRUN_TEMPORAL_TLS_CERT_FILE and BOXRUN_TEMPORAL_TLS_KEY_FILE (one is set)"
        )
    if not wanted:
        # true alone: TLS with the system's roots; unset: TLS only if an API key asks for it
        return bool(settings.temporal_tls or settings.temporal_api_key)
    pem = {name: _read_pem(name, path) for name, path in files.items() if path is not None}
    return TLSConfig(
        server_root_ca_cert=pem.get("temporal_tls_ca_file"),
        client_cert=pem.get("temporal_tls_cert_file"),
        client_private_key=pem.get("temporal_tls_key_file"),
        domain=settings.temporal_tls_server_name,
    )


async def connect(
    address: str,
    namespace: str = "default",
    *,
    tls: TLSConfig | bool | None = None,
    api_key: str | None = None,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """A client with the one data converter. `tls` None is plaintext unless an API key is given
    (the SDK's rule); `runtime` is the Temporal core runtime to use (the worker passes one with
    its Prometheus exporter), None the SDK's default one; `interceptors`: boxrun.propagation's
    (the request id header)."""
    return await Client.connect(
        address,
        namespace=namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=api_key,
        runtime=runtime,
        interceptors=interceptors,
    )


async def connect_with(
    settings: Settings, *, runtime: Runtime | None = None, interceptors: Sequence[Interceptor] = ()
) -> Client:
    """connect() to the cluster the settings name, with their TLS/mTLS and API key (every
    control-plane process connects this way: `boxrun api`, `boxrun worker`)."""
    return await connect(
        settings.temporal_address,
        settings.temporal_namespace,
        tls=tls_config(settings),
        api_key=settings.temporal_api_key,
        runtime=runtime,
        interceptors=interceptors,
    )


async def ensure_search_attributes(client: Client) -> None:
    """Register JobState/BoxId/Owner/PipelineId as Keyword attributes if the namespace lacks them
    (the dev server registers them at start; a fresh production namespace may not)."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = [name for name in SEARCH_ATTRIBUTES if name not in listed.custom_attributes]
    if missing:
        log.info("registering search attributes %s", missing)
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace,
                    search_attributes=dict.fromkeys(missing, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD),
                )
            )
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
                raise
            # Temporal Cloud (and a server whose authorizer keeps this to admins) refuses it:
            # someone with the right registers them once (docs/deploy.md)
            raise TemporalConfigError(
                f"namespace {client.namespace} lacks the search attributes {', '.join(missing)} and this "
                f"client may not add them ({exc.message}); register each as Keyword, e.g. "
                f"`tcld namespace search-attributes add --namespace {client.namespace} --sa '<name>=Keyword'`"
            ) from exc
