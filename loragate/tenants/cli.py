"""`loragate keys`: make, list and revoke API keys, and read their usage, in --state-dir.

They work beside a running gateway (which sees a change on its next request) or without one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loragate.paths import default_state_dir
from loragate.tenants.errors import TenantError
from loragate.tenants.key_store import KeyStore
from loragate.tenants.keys import KeyDefinition, digest, new_secret, unix_time
from loragate.tenants.usage import UsageLog
from loragate.validation_errors import first_problem

STATE_DIR_ENV = "LORAGATE_STATE_DIR"  # the serve setting's own variable
_AGO = re.compile(r"(\d+)([dhm])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60}


def add_keys_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "keys",
        help="API keys: the personas each may use, its limits, and its usage",
        description="Manage the gateway's API keys, stored (as digests of their secrets) in the "
        f"state directory that `serve` uses (--state-dir, ${STATE_DIR_ENV}). A running gateway "
        "sees a change at its next request.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"the gateway's --state-dir (default: ${STATE_DIR_ENV}, else {default_state_dir()})",
    )
    parser.set_defaults(handler=run_keys)
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    _add_create(commands)
    listing = commands.add_parser("list", help="every key, revoked ones too (no secrets)")
    listing.add_argument("--json", action="store_true", help="as JSON")
    listing.set_defaults(keys_handler=_list)
    revoke = commands.add_parser("revoke", help="revoke a key: refused from its next request")
    revoke.add_argument("name")
    revoke.set_defaults(keys_handler=_revoke)
    usage = commands.add_parser("usage", help="requests and tokens by key, model and day (UTC)")
    usage.add_argument("name", nargs="?", help="only this key's")
    usage.add_argument(
        "--since", help="a day (YYYY-MM-DD) or a time ago (7d, 12h, 30m); default: all"
    )
    usage.add_argument("--json", action="store_true", help="as JSON")
    usage.set_defaults(keys_handler=_usage)


def _add_create(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = commands.add_parser(
        "create",
        help="make a key and print its secret, once",
        description="Make a key and print its secret: it is shown only now (only its digest "
        "is stored). Without limits, a key is limited only by the server's own bounds.",
    )
    create.add_argument("name", help="1-64 of letters, digits, '.', '_', '-'")
    create.add_argument(
        "--personas",
        default="*",
        help="comma-separated globs of the persona names it may use (default: *, all)",
    )
    create.add_argument(
        "--no-base-model", action="store_true", help="it may not use the base model itself"
    )
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    create.add_argument("--max-parallel", type=int, help="requests in flight at once")
    create.add_argument("--expires", help="the day (YYYY-MM-DD, UTC) or moment it stops working")
    create.add_argument(
        "--admin", action="store_true", help="it may change personas and keys, and read usage"
    )
    create.add_argument(
        "--keys-file-entry",
        action="store_true",
        help="store nothing: print the secret and a [[key]] table for --keys-file",
    )
    create.set_defaults(keys_handler=_create)


def run_keys(args: argparse.Namespace) -> int:
    try:
        return int(args.keys_handler(args))
    except TenantError as exc:
        print(f"loragate keys: {exc.message}")
        return 1


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    explicit = os.environ.get(STATE_DIR_ENV)
    return Path(explicit).expanduser() if explicit else default_state_dir()


def _definition(args: argparse.Namespace) -> KeyDefinition | str:
    fields: dict[str, Any] = {
        "name": args.name,
        "personas": [glob.strip() for glob in args.personas.split(",") if glob.strip()],
        "base_model": not args.no_base_model,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_parallel": args.max_parallel,
        "admin": args.admin,
        "expires": args.expires,
    }
    try:  # as JSON, as the HTTP API reads it: --expires is an ISO 8601 date or time
        return KeyDefinition.model_validate_json(json.dumps(fields))
    except ValidationError as exc:
        problem = first_problem(exc.errors())
        flag = (problem.dotted() or "").split(".")[0].replace("_", "-")
        return f"--{flag}: {problem.message}" if flag != "name" else problem.sentence()


def _create(args: argparse.Namespace) -> int:
    definition = _definition(args)
    if isinstance(definition, str):
        print(f"loragate keys create: {definition}")
        return 2
    if args.keys_file_entry:
        secret = new_secret()
        table = {**definition.model_dump(mode="json", exclude_none=True), "digest": digest(secret)}
        print(f"secret: {secret}\n\n[[key]]")
        for field, value in table.items():
            print(f"{field} = {json.dumps(value)}")
        return 0
    store = KeyStore(_state_dir(args))
    try:
        key, secret = store.create(definition.key())
    finally:
        store.close()
    print(f"Created the key '{key.name}'. Its secret, shown only this once:\n\n    {secret}\n")
    print(f"Send it as 'Authorization: Bearer {secret[:6]}...'.")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = KeyStore(_state_dir(args))
    try:
        keys = [key.public() for key in store.keys().values()]
    finally:
        store.close()
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    if not keys:
        print(f"No keys in {_state_dir(args)}. Make one with `loragate keys create NAME`.")
        return 0
    rows = [["NAME", "PERSONAS", "BASE", "RPM", "TPM", "PARALLEL", "ADMIN", "EXPIRES", "STATE"]]
    for key in keys:
        state = "revoked" if key["revoked"] is not None else "active"
        if state == "active" and key["expires"] is not None and key["expires"] <= time.time():
            state = "expired"
        rows.append([
            key["name"], ",".join(key["personas"]), _yes(key["base_model"]), _limit(key["rpm"]),
            _limit(key["tpm"]), _limit(key["max_parallel"]), _yes(key["admin"]),
            _day(key["expires"]), state,
        ])  # fmt: skip
    _print_table(rows)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = KeyStore(_state_dir(args))
    try:
        key = store.revoke(args.name)
    finally:
        store.close()
    print(f"Revoked the key '{key.name}'.")
    return 0


def _usage(args: argparse.Namespace) -> int:
    since = None
    if args.since is not None:
        since = _since(args.since)
        if since is None:
            print(f"loragate keys usage: --since: not a day or a time ago: {args.since!r}")
            return 2
    log = UsageLog(_state_dir(args))
    try:
        totals = log.totals(since, args.name)
    finally:
        log.close()
    if args.json:
        print(json.dumps([total.public() for total in totals], indent=2))
        return 0
    if not totals:
        print("No usage recorded" + (" since then." if since is not None else "."))
        return 0
    rows = [["DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]]
    for t in totals:
        total = t.prompt_tokens + t.completion_tokens
        rows.append([
            t.day, t.key, t.persona, str(t.requests), str(t.prompt_tokens),
            str(t.completion_tokens), str(total),
        ])  # fmt: skip
    _print_table(rows)
    return 0


def _since(text: str) -> float | None:
    ago = _AGO.fullmatch(text.strip())
    if ago:
        return time.time() - int(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return unix_time(datetime.date.fromisoformat(text))
    except ValueError:
        return None


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _day(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M")
