"""The `rotor` command: serve, manage clients (on the store or over gRPC), manage keys (over gRPC)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rotor.config import Config, ConfigError, load_config

log = logging.getLogger("rotor")

DEMO_CLIENT = "demo"
DEMO_AUDIENCE = "demo-api"
DEMO_SCOPES = ("demo.read", "demo.write")
DEV_HTTP_LISTEN = "127.0.0.1:50052"  # the dev server's HTTP side port: JWKS, discovery, OAuth 2.0
GC_THRESHOLD = 50_000  # allocations between young collections (Python's default is 700)


class CliError(Exception):
    """A failure to report in one line, with exit status 1."""


# -- serve -----------------------------------------------------------------------


def _setup_logging(config: Config, dev: bool = False) -> None:
    from rotor import logs
    from rotor.workers import worker_index

    # the dev server is read by a person at a terminal: text, unless the config says otherwise
    log_format = "text" if dev else config.log_format
    logs.setup(log_format, config.log_level, worker_index())


async def _serve(config: Config, dev: bool, reuse_port: bool) -> int:
    from rotor.app import RotorServer, address
    from rotor.core.crypto import CryptoError
    from rotor.store import describe_store

    server = RotorServer(config, reuse_port=reuse_port)
    try:
        await server.start()
    except (OSError, CryptoError) as e:
        raise CliError(f"cannot start: {e}") from None
    # what start-up built lives as long as the process: keep the collector from walking it again
    # and again, and let it run less often (each call allocates many short-lived objects)
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    where = address(config.listen, server.port)
    log.info(
        "serving rotor.v1 on %s (store: %s)", where, describe_store(config.database_url, config.sqlite_path)
    )
    if dev:
        await _print_dev_banner(server, where)
    await stopping.wait()
    log.info("stopping: ending streams, finishing calls in flight")
    await server.stop()
    log.info("stopped")
    return 0


async def _print_dev_banner(server: Any, where: str) -> None:
    from rotor.app import address
    from rotor.core.clients import ClientExists, register_client, reset_secret

    try:
        secret = (
            await register_client(
                server.store,
                server.clock,
                DEMO_CLIENT,
                scopes=DEMO_SCOPES,
                audiences=(DEMO_AUDIENCE,),
                admin=True,
            )
        ).secret
    except ClientExists:
        secret = await reset_secret(server.store, server.clock, DEMO_CLIENT)
    basic = base64.b64encode(f"{DEMO_CLIENT}:{secret}".encode()).decode()
    request = json.dumps({"audience": [DEMO_AUDIENCE], "scope": ["demo.read"]})
    http = f"http://{address(server.config.http_listen, server.http_port)}" if server.http_port else ""
    print(
        f"""
Rotor dev server on {where} (SQLite under {server.config.data_dir})
{"Generated" if server.kek_created else "Using"} the dev key-encryption key {server.config.kek_path}.

Demo client (admin; a fresh secret at every start):
  client_id:     {DEMO_CLIENT}
  client_secret: {secret}

Try:
  grpcurl -plaintext -H 'authorization: Basic {basic}' -d '{request}' {where} rotor.v1.TokenService/Issue
  curl -s -u {DEMO_CLIENT}:{secret} -d grant_type=client_credentials {http}/oauth2/token

For the README's walkthrough and the Python examples:
  export ROTOR={where} AUTH={basic} ROTOR_CLIENT_ID={DEMO_CLIENT} ROTOR_CLIENT_SECRET={secret} ROTOR_ISSUER={shlex.quote(server.config.issuer)} ROTOR_HTTP={http}
""",
        flush=True,
    )


async def _prepare_workers(config: Config) -> None:
    """What the workers must not race for: the store's migrations and the dev key-encryption key."""
    from rotor.core.crypto import CryptoError, load_kek

    fresh = await _with_store(config, lambda store: store.last_sequence()) == 0  # migrates, too
    if config.keys.key_store == "pkcs11":  # keys on the token: no KEK to make
        return
    try:
        load_kek(os.environ.get("ROTOR_KEK"), config.kek_path, create=fresh)
    except (OSError, CryptoError) as e:
        raise CliError(f"cannot start: {e}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from rotor.workers import Supervisor, worker_index

    if args.dev and args.config:
        raise CliError("give either --dev or --config, not both")
    if not args.dev and not args.config:
        raise CliError("give --config FILE, or --dev for a local server with no config")
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    config = load_config(args.config) if args.config else Config(http_listen=DEV_HTTP_LISTEN)
    _setup_logging(config, dev=args.dev)
    index = worker_index()
    if args.workers > 1 and index is None:
        if config.listen.endswith(":0"):
            raise CliError("--workers needs a fixed port in listen (the workers share it), not port 0")
        asyncio.run(_prepare_workers(config))
        argv = ["serve", "--dev"] if args.dev else ["serve", "--config", args.config]
        return Supervisor([*argv, "--workers", str(args.workers)], args.workers).run()
    # a worker shares the port; only the first prints the dev banner (it resets the demo secret)
    from rotor import loop

    return loop.run(_serve(config, args.dev and index in (None, 0), reuse_port=index is not None))


# -- clients ---------------------------------------------------------------------


async def _with_store(config: Config, work: Callable[[Any], Any]) -> Any:
    from rotor.store import open_store

    store = await open_store(config.database_url, config.sqlite_path, pool_size=2)
    try:
        return await work(store)
    finally:
        await store.close()


class _StoreClients:
    """`rotor clients` on the store (--config): the core's ClientAdmin, as actor "cli"."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._config = load_config(args.config)

    def _run(self, work: Callable[[Any], Any]) -> Any:
        from rotor.clock import SystemClock
        from rotor.core.clients import ClientAdmin

        async def run(store: Any) -> Any:
            return await work(ClientAdmin(store, SystemClock(), self._config.tokens.max_access_ttl))

        return asyncio.run(_with_store(self._config, run))

    @staticmethod
    def _row(c: Any) -> dict[str, Any]:
        from rotor.api import convert

        return _client_row(convert.client(c))

    def add(self, name: str, fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
        registration = self._run(lambda admin: admin.create(name, **fields))
        return self._row(registration.client), registration.secret

    def get(self, name: str) -> dict[str, Any]:
        return self._row(self._run(lambda admin: admin.get(name)))

    def list(self, tenant: str | None) -> list[dict[str, Any]]:
        async def every(admin: Any) -> list[Any]:
            found, token = [], ""
            while True:
                page = await admin.list(tenant, page_size=1000, page_token=token)
                found += page.clients
                if not (token := page.next_page_token):
                    return found

        return [self._row(c) for c in self._run(every)]

    def update(self, name: str, changes: dict[str, Any], revoke_tokens: bool) -> dict[str, Any]:
        return self._row(self._run(lambda admin: admin.update(name, changes, revoke_tokens=revoke_tokens)))

    def delete(self, name: str) -> dict[str, Any]:
        families, not_before = self._run(lambda admin: admin.delete(name))
        return {"client_id": name, "families_revoked": families, "not_before": _iso(not_before)}

    def set_disabled(self, name: str, disabled: bool) -> int:
        _, families = self._run(lambda admin: admin.set_disabled(name, disabled))
        return int(families)

    def rotate_secret(self, name: str, overlap: float, ttl: float | None) -> dict[str, Any]:
        client, secret = self._run(lambda admin: admin.rotate_secret(name, overlap=overlap, secret_ttl=ttl))
        old_until = client.previous_secret_expires_at
        return {
            "client_id": client.client_id,
            "client_secret": secret,
            "previous_secret_valid_until": _iso(old_until) if old_until else None,
            "secret_expires_at": _iso(client.secret_expires_at) if client.secret_expires_at else None,
        }


class _GrpcClients:
    """`rotor clients` over gRPC (--target), as an admin client: KeyAdmin's client RPCs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args

    def _call(self, method: str, request: Any) -> Any:
        return _admin_call(self._args, method, request)

    def add(self, name: str, fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
        from rotor.v1 import key_admin_pb2

        request = key_admin_pb2.CreateClientRequest(
            name=name,
            tenant=fields["tenant"],
            scopes=fields["scopes"],
            audiences=fields["audiences"],
            admin=fields["admin"],
            allow_any_subject=fields["allow_any_subject"],
            cert_sans=fields["cert_sans"],
            allowed_cidrs=fields["allowed_cidrs"],
        )
        if fields["secret_ttl"] is not None:
            request.secret_ttl.FromNanoseconds(int(fields["secret_ttl"] * 1e9))
        response = self._call("CreateClient", request)
        return _client_row(response.client), response.client_secret

    def get(self, name: str) -> dict[str, Any]:
        from rotor.v1 import key_admin_pb2

        return _client_row(self._call("GetClient", key_admin_pb2.GetClientRequest(client_id=name)).client)

    def list(self, tenant: str | None) -> list[dict[str, Any]]:
        from rotor.v1 import key_admin_pb2

        rows, token = [], ""
        while True:
            request = key_admin_pb2.ListClientsRequest(tenant=tenant or "", page_size=1000, page_token=token)
            page = self._call("ListClients", request)
            rows += [_client_row(c) for c in page.clients]
            if not (token := page.next_page_token):
                return rows

    def update(self, name: str, changes: dict[str, Any], revoke_tokens: bool) -> dict[str, Any]:
        from google.protobuf import field_mask_pb2

        from rotor.v1 import key_admin_pb2

        request = key_admin_pb2.UpdateClientRequest(
            client_id=name,
            update_mask=field_mask_pb2.FieldMask(paths=list(changes)),
            client=key_admin_pb2.Client(**changes),
            revoke_tokens=revoke_tokens,
        )
        return _client_row(self._call("UpdateClient", request).client)

    def delete(self, name: str) -> dict[str, Any]:
        from rotor.v1 import key_admin_pb2

        response = self._call("DeleteClient", key_admin_pb2.DeleteClientRequest(client_id=name))
        return {
            "client_id": name,
            "families_revoked": response.families_revoked,
            "not_before": _iso(response.not_before.seconds),
        }

    def set_disabled(self, name: str, disabled: bool) -> int:
        from google.protobuf import field_mask_pb2

        from rotor.v1 import key_admin_pb2

        request = key_admin_pb2.UpdateClientRequest(
            client_id=name,
            update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
            client=key_admin_pb2.Client(disabled=disabled),
        )
        self._call("UpdateClient", request)
        return -1  # the RPC does not say how many

    def rotate_secret(self, name: str, overlap: float, ttl: float | None) -> dict[str, Any]:
        from rotor.v1 import key_admin_pb2

        request = key_admin_pb2.RotateClientSecretRequest(client_id=name)
        if overlap:
            request.overlap.FromNanoseconds(int(overlap * 1e9))
        if ttl is not None:
            request.secret_ttl.FromNanoseconds(int(ttl * 1e9))
        secret = self._call("RotateClientSecret", request).client_secret
        client = self.get(name)
        return {
            "client_id": name,
            "client_secret": secret,
            "previous_secret_valid_until": None,
            "secret_expires_at": client["secret_expires_at"],
            "overlap_seconds": overlap,
        }


def _clients(args: argparse.Namespace) -> _StoreClients | _GrpcClients:
    """Where `rotor clients` works: over gRPC with --target, else on the store (--config)."""
    if args.target:
        if args.config:
            raise CliError(
                "give either --target (over gRPC, as an admin) or --config (on the store), not both"
            )
        return _GrpcClients(args)
    if args.client_id or args.client_secret or args.ca_file or args.cert_file:
        raise CliError("--client-id, --client-secret and the TLS files go with --target HOST:PORT")
    return _StoreClients(args)


def _client_row(c: Any) -> dict[str, Any]:
    """A KeyAdmin Client message (both doors show clients as the API does) as a row to print."""
    return {
        "client_id": c.client_id,
        "tenant": c.tenant,
        "scopes": list(c.scopes),
        "audiences": list(c.audiences),
        "admin": c.admin,
        "allow_any_subject": c.allow_any_subject,
        "cert_san": c.cert_sans[0] if c.cert_sans else None,
        "allowed_cidrs": list(c.allowed_cidrs),
        "disabled": c.disabled,
        "created_at": _iso(c.created_at.seconds),
        "secret_expires_at": _iso(c.secret_expires_at.seconds) if c.HasField("secret_expires_at") else None,
    }


def cmd_clients_add(args: argparse.Namespace) -> int:
    door = _clients(args)
    fields = {
        "tenant": args.tenant,
        "scopes": args.scope,
        "audiences": args.audience,
        "admin": args.admin,
        "allow_any_subject": args.allow_any_subject,
        "cert_sans": [args.cert_san] if args.cert_san else [],
        "allowed_cidrs": args.allowed_cidr,
        "secret_ttl": _duration(args.expires, "--expires"),
    }
    c, secret = door.add(args.name, fields)
    if args.json:
        print(json.dumps({"client_id": c["client_id"], "client_secret": secret}))
    else:
        print(f"client_id:     {c['client_id']}")
        print(f"client_secret: {secret}")
        print(f"scopes:        {' '.join(c['scopes']) or '-'}")
        print(f"audiences:     {' '.join(c['audiences']) or '-'}")
        print(f"admin:         {'yes' if c['admin'] else 'no'}")
        if c["cert_san"]:
            print(f"cert_san:      {c['cert_san']} (a client certificate with this URI SAN authenticates it)")
        if c["allowed_cidrs"]:
            print(f"allowed from:  {' '.join(c['allowed_cidrs'])}")
        print("The secret is shown once: only its hash is stored.")
    return 0


_CLIENT_COLUMNS = ("client_id", "scopes", "audiences", "admin", "disabled", "created_at")


def cmd_clients_list(args: argparse.Namespace) -> int:
    rows = _clients(args).list(args.tenant)
    for row in rows:
        del row["secret_expires_at"]  # `show` has it; a listing shows no secret's anything
    _output(rows, args.json, _CLIENT_COLUMNS)
    return 0


def cmd_clients_show(args: argparse.Namespace) -> int:
    row = _clients(args).get(args.name)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        for name, value in row.items():
            shown = ("yes" if value else "no") if isinstance(value, bool) else value
            shown = " ".join(shown) if isinstance(shown, list) else shown
            print(f"{name + ':':<19}{shown if shown not in (None, '') else '-'}")
    return 0


def cmd_clients_update(args: argparse.Namespace) -> int:
    from rotor.core.clients import cidrs

    door = _clients(args)
    changes: dict[str, Any] = {}
    if args.add_scope or args.remove_scope or args.add_audience or args.remove_audience:
        current = door.get(args.name)
        if args.add_scope or args.remove_scope:
            changes["scopes"] = _edited(current["scopes"], args.add_scope, args.remove_scope)
        if args.add_audience or args.remove_audience:
            changes["audiences"] = _edited(current["audiences"], args.add_audience, args.remove_audience)
    if args.any_address:
        if args.allowed_cidr:
            raise CliError("give either --allowed-cidr or --any-address, not both")
        changes["allowed_cidrs"] = []
    elif args.allowed_cidr:
        changes["allowed_cidrs"] = list(cidrs(args.allowed_cidr))
    if args.admin is not None:
        changes["admin"] = args.admin
    if args.allow_any_subject is not None:
        changes["allow_any_subject"] = args.allow_any_subject
    if not changes and not args.revoke_tokens:
        raise CliError(
            "nothing to change: give --add-scope/--remove-scope, --add-audience/--remove-audience, "
            "--allowed-cidr, --any-address, --admin/--no-admin, --allow-any-subject/--no-allow-any-subject "
            "or --revoke-tokens"
        )
    row = door.update(args.name, changes, args.revoke_tokens)
    if args.json:
        print(json.dumps(row))
    else:
        print(
            f"updated {row['client_id']}: "
            + ", ".join(sorted(changes))
            + ("; its tokens are revoked" if args.revoke_tokens else "")
        )
    return 0


def _edited(current: list[str], add: list[str], remove: list[str]) -> list[str]:
    """`current` with `add` appended (each once) and `remove` taken out."""
    out = [v for v in current if v not in remove]
    return out + [v for v in dict.fromkeys(add) if v not in out and v not in remove]


def cmd_clients_delete(args: argparse.Namespace) -> int:
    row = _clients(args).delete(args.name)
    if args.json:
        print(json.dumps(row))
    else:
        print(
            f"deleted {row['client_id']}; revoked {row['families_revoked']} refresh families and its access "
            f"tokens issued before {row['not_before']} (its audit history stays)"
        )
    return 0


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    families = _clients(args).set_disabled(args.name, disabled)
    if args.json:
        document: dict[str, Any] = {"client_id": args.name, "disabled": disabled}
        if families >= 0:
            document["families_revoked"] = families
        print(json.dumps(document))
    elif disabled:
        revoked = (
            f"; revoked {families} refresh families"
            if families >= 0
            else "; its refresh families are revoked"
        )
        print(f"disabled {args.name}{revoked}")
    else:
        print(f"enabled {args.name} (its revoked refresh families stay revoked)")
    return 0


def cmd_clients_disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def cmd_clients_enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def cmd_clients_rotate_secret(args: argparse.Namespace) -> int:
    overlap, expires = _duration(args.overlap, "--overlap"), _duration(args.expires, "--expires")
    row = _clients(args).rotate_secret(args.name, overlap or 0.0, expires)
    old_until = row["previous_secret_valid_until"]
    if args.json:
        row.pop("overlap_seconds", None)
        print(json.dumps(row))
    else:
        print(f"client_id:     {row['client_id']}")
        print(f"client_secret: {row['client_secret']}")
        if old_until:
            print(f"old secret:    works until {old_until}")
        elif row.get("overlap_seconds"):
            print(f"old secret:    works for {row['overlap_seconds']:g} s more")
        else:
            print("old secret:    stopped working now")
        if row["secret_expires_at"]:
            print(f"expires:       {row['secret_expires_at']}")
        print("The secret is shown once: only its hash is stored.")
    return 0


def _duration(text: str | None, option: str) -> float | None:
    from rotor.config import parse_duration

    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise CliError(f"{option}: {e}") from None
    if seconds <= 0:
        raise CliError(f"{option}: must be positive")
    return seconds


# -- keys (over gRPC) ------------------------------------------------------------


def _channel(args: argparse.Namespace, target: str) -> Any:
    """A channel to the server: TLS when --ca-file (or a client certificate) is given."""
    import grpc

    if not (args.ca_file or args.cert_file):
        return grpc.insecure_channel(target)
    try:
        root = Path(args.ca_file).read_bytes() if args.ca_file else None
        cert = Path(args.cert_file).read_bytes() if args.cert_file else None
        key = Path(args.key_file).read_bytes() if args.key_file else None
    except OSError as e:
        raise CliError(f"cannot read {e.filename}: {e.strerror}") from None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root, key, cert))


def _admin_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    import grpc

    from rotor.v1 import key_admin_pb2_grpc

    client_id = args.client_id or os.environ.get("ROTOR_CLIENT_ID", "")
    secret = args.client_secret or os.environ.get("ROTOR_CLIENT_SECRET", "")
    if not client_id or not secret:
        raise CliError(
            "admin credentials needed: --client-id/--client-secret or ROTOR_CLIENT_ID/ROTOR_CLIENT_SECRET"
        )
    target = args.target or load_config(args.config).listen
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    with _channel(args, target) as channel:
        stub = key_admin_pb2_grpc.KeyAdminStub(channel)
        try:
            return getattr(stub, method)(request, metadata=(("authorization", f"Basic {basic}"),), timeout=30)
        except grpc.RpcError as e:
            raise CliError(f"{method} failed: {e.code().name}: {e.details()}") from None


def _key_row(key: Any) -> dict[str, Any]:
    from rotor.v1 import keys_pb2

    def ts(t: Any) -> str:
        return _iso(t.seconds + t.nanos / 1e9) if t.seconds else ""

    return {
        "kid": key.kid,
        "alg": key.alg,
        "state": keys_pb2.KeyState.Name(key.state).removeprefix("KEY_STATE_").lower(),
        "created_at": ts(key.created_at),
        "activates_at": ts(key.activates_at),
        "retires_at": ts(key.retires_at),
        "expires_at": ts(key.expires_at),
        "revoked_at": ts(key.revoked_at),
        "revocation_reason": key.revocation_reason,
        "key_store": key.key_store,
    }


_KEY_COLUMNS = ("kid", "alg", "state", "key_store", "activates_at", "retires_at", "expires_at")


def cmd_keys_list(args: argparse.Namespace) -> int:
    from rotor.v1 import key_admin_pb2

    resp = _admin_call(
        args,
        "ListKeys",
        key_admin_pb2.ListKeysRequest(tenant=args.tenant, include_expired=args.include_expired),
    )
    _output([_key_row(k) for k in resp.keys], args.json, _KEY_COLUMNS)
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from rotor.v1 import key_admin_pb2

    resp = _admin_call(
        args,
        "RotateKeys",
        key_admin_pb2.RotateKeysRequest(tenant=args.tenant, reason=args.reason, immediate=args.immediate),
    )
    _output([_key_row(resp.key)], args.json, _KEY_COLUMNS)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from rotor.v1 import key_admin_pb2

    resp = _admin_call(args, "RevokeKey", key_admin_pb2.RevokeKeyRequest(kid=args.kid, reason=args.reason))
    if args.json:
        print(
            json.dumps(
                {
                    **_key_row(resp.key),
                    "operation_id": resp.operation_id,
                    "pending_approval": resp.pending_approval,
                }
            )
        )
    elif resp.pending_approval:
        print(f"revocation of {args.kid} awaits a second admin: rotor keys approve {resp.operation_id}")
    else:
        print(f"revoked {resp.key.kid}")
    return 0


def cmd_keys_approve(args: argparse.Namespace) -> int:
    from rotor.v1 import key_admin_pb2

    resp = _admin_call(
        args, "ApproveOperation", key_admin_pb2.ApproveOperationRequest(operation_id=args.operation_id)
    )
    _output([_key_row(resp.key)], args.json, _KEY_COLUMNS)
    return 0


# -- status and drill (over gRPC) ------------------------------------------------


class _AdminSession:
    """One channel to the server for several admin calls (`rotor status`, `rotor drill`), with the
    credentials and target `rotor keys` takes."""

    def __init__(self, args: argparse.Namespace) -> None:
        client_id = args.client_id or os.environ.get("ROTOR_CLIENT_ID", "")
        secret = args.client_secret or os.environ.get("ROTOR_CLIENT_SECRET", "")
        if not client_id or not secret:
            raise CliError(
                "admin credentials needed: --client-id/--client-secret or ROTOR_CLIENT_ID/ROTOR_CLIENT_SECRET"
            )
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        self._metadata = (("authorization", f"Basic {basic}"),)
        self._channel = _channel(args, args.target or load_config(args.config).listen)

    def __enter__(self) -> _AdminSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def call(self, method: str, request: Any) -> Any:
        """KeyAdmin/`method`; CliError naming the status when it fails."""
        from rotor.v1 import key_admin_pb2_grpc

        return self._call(key_admin_pb2_grpc.KeyAdminStub(self._channel), method, request)

    def key_set(self, tenant: str) -> Any:
        from rotor.v1 import token_service_pb2, token_service_pb2_grpc

        stub = token_service_pb2_grpc.TokenServiceStub(self._channel)
        return self._call(stub, "GetKeySet", token_service_pb2.GetKeySetRequest(tenant=tenant))

    def _call(self, stub: Any, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(stub, method)(request, metadata=self._metadata, timeout=30)
        except grpc.RpcError as e:
            raise CliError(f"{method} failed: {e.code().name}: {e.details()}") from None


AUDIT_LOOKBACK = (3600.0, 86400.0, 30 * 86400.0, None)  # ever wider windows for the newest entries


def _newest_audit(session: _AdminSession, tenant: str) -> list[Any]:
    """The tenant's newest audit entries (ListAuditEvents pages oldest first: look back ever further)."""
    from rotor.api import convert
    from rotor.core.status import AUDIT_SHOWN
    from rotor.v1 import key_admin_pb2

    now = datetime.now(UTC).timestamp()
    found: list[Any] = []
    for lookback in AUDIT_LOOKBACK:
        found, token = [], ""
        while True:
            request = key_admin_pb2.ListAuditEventsRequest(tenant=tenant, page_size=1000, page_token=token)
            if lookback is not None:
                request.since.CopyFrom(convert.timestamp(now - lookback))
            page = session.call("ListAuditEvents", request)
            # the default tenant's "" asks for every tenant's entries: keep its own
            found += [convert.audit_entry_of(e) for e in page.events if e.tenant == tenant]
            found = found[-AUDIT_SHOWN:]
            token = page.next_page_token
            if not token:
                break
        if len(found) >= AUDIT_SHOWN:
            break
    return found


def _remote_status(session: _AdminSession, tenant: str) -> Any:
    """The tenant's status model (rotor.core.status), from GetRotationStatus, ListKeys,
    ListAuditEvents and GetKeySet: what /status.json shows."""
    from rotor.api import convert
    from rotor.core.status import build_status
    from rotor.v1 import key_admin_pb2

    rotation = session.call("GetRotationStatus", key_admin_pb2.GetRotationStatusRequest(tenant=tenant))
    listed = session.call("ListKeys", key_admin_pb2.ListKeysRequest(tenant=tenant))
    keyset = session.key_set(tenant)
    audit = _newest_audit(session, tenant)
    return build_status(
        tenant,
        now=datetime.now(UTC).timestamp(),
        latest_sequence=rotation.latest_sequence,
        next_rotation_at=(
            convert.seconds_of_timestamp(keyset.next_rotation_at)
            if keyset.HasField("next_rotation_at")
            else None
        ),
        keys=[convert.signing_key_of(k) for k in listed.keys],
        watchers=[convert.watcher_sighting_of(w) for w in rotation.watchers],
        audit=audit,
    )


def _ago(instant: float | None, now: float) -> str:
    if instant is None:
        return "-"
    seconds = now - instant
    return f"{_span(abs(seconds))} {'ago' if seconds >= 0 else 'from now'}"


def _span(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _flag(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def _print_status(model: Any) -> None:
    from rotor.core.status import iso

    tenant = model.tenant or "(default)"
    nxt = model.next_rotation_at
    print(f"tenant {tenant}  now {iso(model.now)}  newest event {model.latest_sequence}")
    print(f"next rotation: {iso(nxt) + ' (' + _ago(nxt, model.now) + ')' if nxt is not None else 'none due'}")
    print("\nkeys")
    _output(
        [
            {
                "kid": k.short_kid,
                "alg": k.alg,
                "state": k.state,
                "published": iso(k.published_at),
                "activates": iso(k.activates_at),
                "retires": iso(k.retires_at),
                "expires": iso(k.expires_at),
            }
            for k in model.keys
        ],
        False,
        ("kid", "alg", "state", "published", "activates", "retires", "expires"),
    )
    print("\nwatchers")
    if not model.watchers:
        print("no named watcher is connected (a watcher names itself with the metadata x-rotor-watcher)")
    rows = []
    for w in model.watchers:
        outcomes = " ".join(f"{o}={n}" for o, n in sorted(w.outcomes.items()))
        ratio = w.failure_ratio
        rows.append(
            {
                "name": w.name,
                "replica": w.replica,
                "connected": _ago(w.connected_at, model.now),
                "sequence": str(w.sequence),
                "behind": str(w.behind),
                "pending": _flag(w.holds_pending),
                "active": _flag(w.holds_active),
                "reported": _ago(w.last_report_at, model.now),
                "verifications (15m)": outcomes,
                "failed": (
                    f"{ratio:.1%} ({w.other_failure_ratio or 0:.1%} not expiry)" if ratio is not None else "-"
                ),
            }
        )
    if rows:
        _output(rows, False, tuple(rows[0]))
    if model.audit is not None:
        print("\naudit (newest first)")
        _output(
            [
                {
                    "#": str(a.sequence),
                    "when": iso(a.occurred_at),
                    "actor": a.actor,
                    "action": a.action,
                    "target": a.target,
                    "outcome": a.outcome,
                }
                for a in model.audit
            ],
            False,
            ("#", "when", "actor", "action", "target", "outcome"),
        )


def cmd_status(args: argparse.Namespace) -> int:
    with _AdminSession(args) as session:
        model = _remote_status(session, args.tenant)
    if args.json:
        print(json.dumps(model.to_dict(), indent=2))
    else:
        _print_status(model)
    return 0


DRILL_POLL = 0.2  # seconds between looks at GetRotationStatus


def cmd_drill(args: argparse.Namespace) -> int:
    """Rotate (not immediately, reason "drill") and follow GetRotationStatus until every named
    watcher holds the new key; exit 1 naming those that did not within the timeout."""
    import time

    from rotor.api import convert
    from rotor.v1 import key_admin_pb2, keys_pb2

    timeout = _duration(args.timeout, "--timeout")
    with _AdminSession(args) as session:
        status = key_admin_pb2.GetRotationStatusRequest(tenant=args.tenant)
        before = session.call("GetRotationStatus", status)
        listed = session.call("ListKeys", key_admin_pb2.ListKeysRequest(tenant=args.tenant))
        was_pending = {k.kid for k in listed.keys if k.state == keys_pb2.KEY_STATE_PENDING}
        rotated = session.call(
            "RotateKeys", key_admin_pb2.RotateKeysRequest(tenant=args.tenant, reason="drill", immediate=False)
        )
        started = time.monotonic()
        key = rotated.key
        if timeout is None:  # the tenant's publish_lead: the new key signs then
            timeout = convert.seconds_of_timestamp(key.activates_at) - convert.seconds_of_timestamp(
                key.created_at
            )
        # the watchers at the start must get it; so must any that connect meanwhile
        expected = {_who(w): None for w in before.watchers}
        replicas = {_who(w): w.replica for w in before.watchers}
        took: dict[tuple[str, str], float] = {}
        published = None
        while True:
            now = time.monotonic() - started
            current = session.call("GetRotationStatus", status)
            if published is None:  # the key's KEY_PUBLISHED is at or before the newest event now
                published = current.latest_sequence
            streams: dict[tuple[str, str], list[Any]] = {}
            for w in current.watchers:
                streams.setdefault(_who(w), []).append(w)
                replicas[_who(w)] = w.replica
            for who, same in streams.items():  # every stream of a name on a replica must hold it
                expected.setdefault(who, None)
                if who not in took and all(_holds(w, key.kid, published) for w in same):
                    took[who] = now
            missing = sorted(set(expected) - set(took))
            if not missing or now >= timeout:
                break
            time.sleep(min(DRILL_POLL, max(timeout - now, 0.0)))
    report = {
        "tenant": args.tenant,
        "kid": key.kid,
        "timeout_seconds": timeout,
        "passed": not missing,
        "already_pending": key.kid in was_pending,
        "watchers": [
            {
                "name": who[0],
                "replica": replicas.get(who, ""),
                "seconds": round(took[who], 3) if who in took else None,
            }
            for who in sorted(expected)
        ],
        "missing": [name for name, _ in missing],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        tenant = args.tenant or "(default)"
        if key.kid in was_pending:  # RotateKeys returns the pending key rather than publish another
            print(f"drill: key {key.kid} was already pending in tenant {tenant}; following it")
        else:
            print(f"drill: rotated tenant {tenant} to {key.kid} (pending; signs in {_span(timeout)})")
        for entry in report["watchers"]:
            seconds = entry["seconds"]
            got = f"had it after {seconds:.1f}s" if seconds is not None else f"NOT within {_span(timeout)}"
            where = f" (replica {entry['replica']})" if entry["replica"] else ""
            print(f"  {entry['name']}{where}: {got}")
        if not expected:
            print("no named watcher is connected: nothing to follow", file=sys.stderr)
    if missing:
        names = ", ".join(name for name, _ in missing)
        print(
            f"rotor: drill failed: {names} did not get key {key.kid} within {_span(timeout)}", file=sys.stderr
        )
        return 1
    return 0


def _who(watcher: Any) -> tuple[str, str]:
    """A watcher as the drill reports it: its name (the fleet view lists each name once)."""
    return (watcher.name, "")


def _holds(watcher: Any, kid: str, published: int) -> bool:
    """Whether a watcher holds key `kid`: it says so (kids), or it was sent or applied the event
    that published it or a later one (every key event carries the whole key set)."""
    return kid in watcher.kids or watcher.sent_sequence >= published


# -- output ----------------------------------------------------------------------


def _iso(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _output(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, list):
            return " ".join(v) or "-"
        return str(v) or "-"

    table = [list(columns)] + [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# -- parser ----------------------------------------------------------------------


# -- audit (on the store) ---------------------------------------------------------


async def _audit_pages(store: Any, since: float = 0.0) -> Any:
    after = 0
    while entries := await store.audit_after(after, since=since, limit=1000):
        yield entries
        after = entries[-1].sequence


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from rotor.core.audit import ChainBroken, ChainVerifier

    config = load_config(args.config)

    async def verify(store: Any) -> ChainVerifier:
        checker = ChainVerifier()
        async for entries in _audit_pages(store):
            checker.feed(entries)
        checker.finish(*await store.audit_head())
        return checker

    try:
        checker = asyncio.run(_with_store(config, verify))
    except ChainBroken as e:
        print(f"rotor: {e}", file=sys.stderr)
        return 1
    print(f"audit log verified: {checker.count} entries, head {checker.last_hash}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    config = load_config(args.config)
    since = _instant(args.since) if args.since else 0.0

    async def export(store: Any) -> int:
        count = 0
        async for entries in _audit_pages(store, since):
            for entry in entries:
                row = asdict(entry)
                row["occurred_at"] = _iso(entry.occurred_at)
                print(json.dumps(row, separators=(",", ":")))
                count += 1
        return count

    asyncio.run(_with_store(config, export))
    return 0


def _instant(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--since {text[:40]!r} is not an ISO 8601 time such as 2026-01-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- config ------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from rotor.config import format_duration

    config = load_config(args.file)  # ConfigError: one line per violation, exit 2
    settings = asdict(config)
    durations = {
        "keys": (
            "rotation_period",
            "publish_lead",
            "max_cache_age",
            "clock_skew",
            "max_ack_wait",
            "event_retention",
        ),
        "tokens": ("access_ttl", "max_access_ttl", "refresh_ttl", "refresh_family_ttl"),
        "cluster": ("lease_ttl",),
    }
    for table, names in durations.items():
        for name in names:
            settings[table][name] = format_duration(settings[table][name])
    if settings["database_url"]:
        from rotor.store import describe_store

        settings["database_url"] = describe_store(config.database_url, config.sqlite_path)  # never a password
    print(json.dumps(settings, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotor", description="Rotor: a gRPC token service with pushed key rotation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--dev", action="store_true", help="no config: SQLite under ./data, a demo client")
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N", help="N processes sharing the port and the store"
    )
    serve.set_defaults(func=cmd_serve)

    clients = sub.add_parser(
        "clients",
        help="register and manage clients: on the store (--config) or over gRPC as an admin (--target)",
    )
    csub = clients.add_subparsers(dest="clients_command", required=True)
    add = csub.add_parser("add", help="register a client; prints its secret once")
    add.add_argument("name", help="the client_id")
    add.add_argument("--scope", action="append", default=[], help="a scope it may ask for (repeatable)")
    add.add_argument(
        "--audience", action="append", default=[], help="an audience it may ask for (repeatable)"
    )
    add.add_argument("--admin", action="store_true", help="may call KeyAdmin and revoke any token")
    add.add_argument("--allow-any-subject", action="store_true", help="may name another subject in Issue")
    add.add_argument(
        "--cert-san", metavar="URI", help="a client certificate with this URI SAN authenticates it (mTLS)"
    )
    add.add_argument(
        "--allowed-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network it may call from, IPv4 or IPv6 (repeatable; none: any)",
    )
    add.add_argument("--tenant", default="", help="its tenant: keys, events and revocations of its own")
    add.add_argument("--expires", metavar="DURATION", help='the secret stops working after, e.g. "90d"')
    add.set_defaults(func=cmd_clients_add)
    lst = csub.add_parser("list", help="list clients")
    lst.add_argument(
        "--tenant",
        default=None,
        help="only this tenant's (default: every tenant on the store; over gRPC, the admin's own)",
    )
    lst.set_defaults(func=cmd_clients_list)
    show = csub.add_parser("show", help="show one client (never its secret)")
    show.add_argument("name")
    show.set_defaults(func=cmd_clients_show)
    upd = csub.add_parser(
        "update", help="change a client's grants; the next call sees them (tokens issued stay valid)"
    )
    upd.add_argument("name")
    upd.add_argument("--add-scope", action="append", default=[], metavar="S", help="repeatable")
    upd.add_argument("--remove-scope", action="append", default=[], metavar="S", help="repeatable")
    upd.add_argument("--add-audience", action="append", default=[], metavar="A", help="repeatable")
    upd.add_argument("--remove-audience", action="append", default=[], metavar="A", help="repeatable")
    upd.add_argument(
        "--allowed-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="replaces the networks it may call from (repeatable)",
    )
    upd.add_argument("--any-address", action="store_true", help="clear allowed_cidrs: any address")
    upd.add_argument(
        "--admin", action=argparse.BooleanOptionalAction, default=None, help="make or unmake an admin"
    )
    upd.add_argument("--allow-any-subject", action=argparse.BooleanOptionalAction, default=None)
    upd.add_argument(
        "--revoke-tokens",
        action="store_true",
        help="also revoke every token it holds (as RevokeClientTokens)",
    )
    upd.set_defaults(func=cmd_clients_update)
    dele = csub.add_parser(
        "delete", help="remove a client and revoke its tokens; its audit history stays, its name is free"
    )
    dele.add_argument("name")
    dele.set_defaults(func=cmd_clients_delete)
    dis = csub.add_parser(
        "disable", help="stop a client at once: it cannot authenticate, its grants are revoked"
    )
    dis.add_argument("name")
    dis.set_defaults(func=cmd_clients_disable)
    ena = csub.add_parser("enable", help="let a disabled client authenticate again")
    ena.add_argument("name")
    ena.set_defaults(func=cmd_clients_enable)
    rot = csub.add_parser("rotate-secret", help="a new secret; the old one keeps working for --overlap")
    rot.add_argument("name")
    rot.add_argument("--overlap", metavar="DURATION", help='how long the old secret still works, e.g. "24h"')
    rot.add_argument("--expires", metavar="DURATION", help='the new secret stops working after, e.g. "90d"')
    rot.set_defaults(func=cmd_clients_rotate_secret)
    for p in (add, lst, show, upd, dele, dis, ena, rot):
        p.add_argument(
            "--config", help="TOML config file: work on its store (default: the dev settings, ./data)"
        )
        _add_admin_flags(p)
        p.add_argument("--json", action="store_true", help="print JSON")

    audit = sub.add_parser("audit", help="the tamper-evident audit log (works on the store directly)")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser("verify", help="check the whole hash chain; names the first broken entry")
    verify.set_defaults(func=cmd_audit_verify)
    export = asub.add_parser("export", help="write the log as JSON Lines")
    export.add_argument("--since", metavar="TIME", help="only entries at or after, e.g. 2026-01-01T00:00:00Z")
    export.set_defaults(func=cmd_audit_export)
    for p in (verify, export):
        p.add_argument("--config", help="TOML config file (default: the dev settings, ./data)")

    cfg = sub.add_parser("config", help="check a config file")
    csub_cfg = cfg.add_subparsers(dest="config_command", required=True)
    check = csub_cfg.add_parser(
        "check", help="exit 0 and print the effective settings, or one line per violation"
    )
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)

    keys = sub.add_parser("keys", help="manage signing keys (over gRPC, as an admin client)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    klist = ksub.add_parser("list", help="list keys")
    klist.add_argument("--include-expired", action="store_true")
    klist.set_defaults(func=cmd_keys_list)
    rotate = ksub.add_parser("rotate", help="publish a new key")
    rotate.add_argument("--immediate", action="store_true", help="sign with it at once")
    rotate.add_argument("--reason", default="")
    rotate.set_defaults(func=cmd_keys_rotate)
    revoke = ksub.add_parser(
        "revoke",
        help="revoke a key",
        epilog="A kid that starts with '-' goes after '--': rotor keys revoke -- -AbC...",
    )
    revoke.add_argument("kid")
    revoke.add_argument("--reason", default="")
    revoke.set_defaults(func=cmd_keys_revoke)
    approve = ksub.add_parser("approve", help="approve another admin's operation")
    approve.add_argument("operation_id")
    approve.set_defaults(func=cmd_keys_approve)
    for p in (klist, rotate, revoke, approve):
        p.add_argument("--target", help="HOST:PORT (default: listen from --config)")
        p.add_argument("--config", help="TOML config file")
        p.add_argument("--tenant", default="", help="tenant (default: the default tenant)")
        _add_admin_flags(p, target=False)
        p.add_argument("--json", action="store_true", help="print JSON")
    status = sub.add_parser(
        "status", help="a tenant's key timeline, named watchers and newest audit events (over gRPC)"
    )
    status.set_defaults(func=cmd_status)
    drill = sub.add_parser(
        "drill",
        help="rehearse a rotation: publish a new key and follow it to every named watcher",
        description=(
            'Calls RotateKeys (not immediate, reason "drill"), then follows GetRotationStatus until every '
            "named watcher holds the new key. Exit 0 when all did within --timeout, else 1 naming those that did not."
        ),
    )
    drill.add_argument(
        "--timeout",
        metavar="DURATION",
        help="how long the watchers have (default: the tenant's publish_lead)",
    )
    drill.set_defaults(func=cmd_drill)
    for p in (status, drill):
        p.add_argument("--target", help="HOST:PORT (default: listen from --config)")
        p.add_argument("--config", help="TOML config file")
        p.add_argument("--tenant", default="", help="tenant (default: the default tenant)")
        p.add_argument("--client-id", help="admin client id (or ROTOR_CLIENT_ID)")
        p.add_argument("--client-secret", help="admin client secret (or ROTOR_CLIENT_SECRET)")
        p.add_argument("--ca-file", help="PEM CA that signed the server's certificate (TLS)")
        p.add_argument("--cert-file", help="PEM client certificate (mTLS)")
        p.add_argument("--key-file", help="PEM key of the client certificate (mTLS)")
        p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _add_admin_flags(p: argparse.ArgumentParser, target: bool = True) -> None:
    """The flags of a command that calls KeyAdmin as an admin client (shared by keys and clients)."""
    if target:
        p.add_argument("--target", help="HOST:PORT: work over gRPC as an admin client, not on the store")
    p.add_argument("--client-id", help="admin client id (or ROTOR_CLIENT_ID)")
    p.add_argument("--client-secret", help="admin client secret (or ROTOR_CLIENT_SECRET)")
    p.add_argument("--ca-file", help="PEM CA that signed the server's certificate (TLS)")
    p.add_argument("--cert-file", help="PEM client certificate (mTLS)")
    p.add_argument("--key-file", help="PEM key of the client certificate (mTLS)")


def _dash_safe(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Let `rotor keys revoke -AbC...` work: a kid (base64url) may start with '-'.

    argparse would take such a value for an unknown option; put it after '--' instead. Likewise a
    duration option given a value that starts with '-' (`--expires -1d`) becomes `--expires=-1d`,
    so the refusal is the option's own one-line error, not a usage dump.
    """
    argv = _join_dashed_durations(argv)
    if argv[:1] != ["keys"] or len(argv) < 3 or argv[1] not in ("revoke", "approve") or "--" in argv:
        return argv
    sub = _subparser(_subparser(parser, "keys"), argv[1])
    known = set(sub._option_string_actions)
    for i, arg in enumerate(argv[2:], start=2):
        if arg.startswith("-") and arg.split("=", 1)[0] not in known and argv[i - 1] not in _valued(sub):
            return [*argv[:i], *argv[i + 1 :], "--", arg]
    return argv


DURATION_OPTIONS = ("--expires", "--overlap", "--timeout")


def _join_dashed_durations(argv: list[str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in DURATION_OPTIONS and arg.startswith("-") and arg != "--":
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = action.choices[name]
    return sub


def _valued(parser: argparse.ArgumentParser) -> set[str]:
    """Option strings that take a value (the next argument is theirs)."""
    return {s for a in parser._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}


def main(argv: Sequence[str] | None = None) -> int:
    from rotor.core.errors import RotorError
    from rotor.store import StoreError

    parser = build_parser()
    args = parser.parse_args(_dash_safe(parser, list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.func(args))
    except ConfigError as e:
        for line in e.violations:
            print(f"rotor: config: {line}", file=sys.stderr)
        return 2
    except (CliError, RotorError, StoreError) as e:
        print(f"rotor: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rotor audit export | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
