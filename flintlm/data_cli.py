"""`flintlm data`: the captured chat completions in the platform store, for the operator: rate
one, export them as fine-tuning JSONL, erase a key's, purge what is past the retention. Works on the store directly (the one
`serve` uses with the same --data-dir / --database-url), so it needs no running server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flintlm import env
from flintlm.config import PlatformConfig, field_docs

if TYPE_CHECKING:
    from flintlm.platform.completion_store import CompletionStore

data_app = typer.Typer(help="Captured chat completions: rate them, export them as fine-tuning "
                            "data, erase a key's.", no_args_is_help=True)


def _platform_opt(name: str) -> Any:
    help_text = f"{field_docs(PlatformConfig)[name]} [env: {env.var_name(name)}]"
    return typer.Option(help=help_text, show_default=False)


DataDirOpt = Annotated[str | None, _platform_opt("data_dir")]
DatabaseUrlOpt = Annotated[str | None, _platform_opt("database_url")]
TtlOpt = Annotated[float | None, _platform_opt("capture_ttl_days")]


@contextmanager
def _completions(data_dir: str | None, database_url: str | None,
                 capture_ttl_days: float | None = None) -> Iterator[CompletionStore]:
    """The migrated store `serve` uses with the same flags; it reads nothing past the retention
    but deletes nothing by it either (a shorter TTL given here than to `serve` must not erase
    what the server keeps): `purge` does, and the server at every write."""
    from flintlm.cli import build_config
    from flintlm.platform.completion_store import CompletionStore
    from flintlm.platform.db import Database

    config = build_config({"data_dir": data_dir, "database_url": database_url,
                           "capture_ttl_days": capture_ttl_days}).platform
    db = Database.from_config(config)
    try:
        db.migrate()
        yield CompletionStore.from_config(db, config)
    finally:
        db.close()


@data_app.command("rate")
def rate(
    completion_id: Annotated[str, typer.Argument(help="The stored completion's id.")],
    rating: Annotated[int, typer.Option(help="The rating, an integer (e.g. 1..5, or 1/-1).")],
    comment: Annotated[str | None, typer.Option(help="A comment on the answer.")] = None,
    data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None,
    capture_ttl_days: TtlOpt = None,
) -> None:
    """Rate a stored completion: sets its metadata `rating` (and `comment`), other keys kept."""
    from flintlm.platform.completion_store import COMMENT_KEY, RATING_KEY

    feedback = {RATING_KEY: str(rating)} | ({COMMENT_KEY: comment} if comment is not None else {})
    with _completions(data_dir, database_url, capture_ttl_days) as store:
        try:
            stored = store.update_metadata(None, completion_id, feedback, merge=True)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--comment") from None
    if stored is None:
        typer.echo(f"no stored completion {completion_id} (unknown or past retention)",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"rated {completion_id}: {rating}")


@data_app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="The JSONL file to write (replaced).")],
    format: Annotated[str, typer.Option(
        help="openai-chat (supervised: {\"messages\": [...]}) or preference (DPO pairs of the "
             "best and worst rated answers to one prompt); cut-off answers are left out.")] = "openai-chat",
    min_rating: Annotated[int | None, typer.Option(
        help="Only completions rated at least this (preference: the preferred answer).")
    ] = None,
    since: Annotated[str | None, typer.Option(
        help="Only completions stored from then on (ISO date/date-time or epoch seconds, UTC).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id's completions.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's completions.")] = None,
    data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None,
    capture_ttl_days: TtlOpt = None,
) -> None:
    """Write stored completions as fine-tuning JSONL in OpenAI's formats."""
    from flintlm.platform.completion_store import CompletionFilter
    from flintlm.platform.export import ExportFormat, ExportOptions, export_jsonl
    from flintlm.platform.tables import parse_db_time

    try:
        export_format = ExportFormat(format)
    except ValueError:
        raise typer.BadParameter(f"{format!r} is not one of openai-chat, preference",
                                 param_hint="--format") from None
    try:
        start = None if since is None else parse_db_time(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    options = ExportOptions(export_format, min_rating,
                            CompletionFilter(key_id=key, model=model, since=start))
    with _completions(data_dir, database_url, capture_ttl_days) as store:
        num_lines = export_jsonl(store, out, options)
    typer.echo(f"wrote {num_lines} {export_format.value} lines to {out}", err=True)


@data_app.command("delete")
def delete(
    key: Annotated[str, typer.Option(help="The key id whose captured completions to erase.")],
    data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None,
) -> None:
    """Erase every completion captured from a key (for good; the ledger keeps its usage)."""
    with _completions(data_dir, database_url) as store:
        num_deleted = store.delete_key(key)
    typer.echo(f"deleted {num_deleted} stored completions of {key}")


@data_app.command("purge")
def purge(data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None,
          capture_ttl_days: TtlOpt = None) -> None:
    """Delete the stored completions past the retention now (the server does at every write;
    this is for a store that sees none, e.g. from cron). Give it the TTL `serve` has."""
    with _completions(data_dir, database_url, capture_ttl_days) as store:
        num_deleted = store.purge_expired()
    typer.echo(f"deleted {num_deleted} stored completions past the retention")
