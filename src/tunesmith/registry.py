"""The model registry: immutable numbered versions under a name, and movable aliases.

The index lives in a SQL database (SQLite in the home folder by default; any SQLAlchemy URL,
e.g. PostgreSQL, via `TUNESMITH_DATABASE_URL`), the artifacts in `<home>/models/<name>/`.

Registration is atomic. An artifact is first written completely into `<home>/staging/`; then, in
one database transaction, the next version number is reserved, the staged folder is renamed into
place (an atomic rename on one file system) and the transaction commits. A process killed before
the commit leaves at most an unreferenced folder, never a version that points at half an artifact.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tunesmith.errors import ConflictError, NotFoundError, RegistryError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_ALIAS = "production"


def default_home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", ".tunesmith")).expanduser().resolve()


def _now() -> datetime:
    return datetime.now(UTC)


class _Base(DeclarativeBase):
    pass


class _ModelRow(_Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _VersionRow(_Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))  # relative to the home folder
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(String(1024), default="")


class _AliasRow(_Base):
    __tablename__ = "aliases"
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _AliasEventRow(_Base):
    """Every move of an alias, so `rollback` can step back through them."""

    __tablename__ = "alias_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)


class _ApiKeyRow(_Base):
    """API keys for the server. Only a SHA-256 of each key is stored: keys are 256-bit random, so a fast
    hash is enough (no dictionary to attack), and a leaked database does not leak usable keys."""

    __tablename__ = "api_keys"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


SCOPES = ("read", "admin")
KEY_PREFIX = "tsk_"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class ApiKey:
    name: str
    scopes: list[str]
    created_at: datetime


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    task: str
    created_at: datetime
    metrics: dict[str, Any]
    description: str = ""
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _make_read_only(root: Path) -> None:
    # Versions are immutable: files lose their write bits (folders keep theirs so delete still works).
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split 'name', 'name@3', 'name@v3' or 'name@alias' into (name, selector)."""
    name, _, selector = ref.partition("@")
    if not NAME_PATTERN.match(name):
        raise RegistryError(
            f"Invalid model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, starting with a "
            "letter or digit)."
        )
    return name, selector or None


class Registry:
    """Versions, aliases and artifacts of trained models."""

    def __init__(self, home: str | Path | None = None, database_url: str | None = None) -> None:
        self.home = Path(home).expanduser().resolve() if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        url = database_url or os.environ.get("TUNESMITH_DATABASE_URL") or f"sqlite:///{self.home / 'registry.db'}"
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    # -- writing ------------------------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder to write an artifact into; removed if the block fails."""
        path = self.home / "staging" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def register(
        self,
        name: str,
        staged: Path,
        task: str,
        metrics: dict[str, Any] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Move a complete staged artifact into the registry as the next version of `name`."""
        parse_ref(name)
        staged = Path(staged)
        if not staged.is_dir():
            raise RegistryError(f"Nothing to register: {staged} is not a folder.")
        for _attempt in range(20):
            relative = f"models/{name}/v-{uuid.uuid4().hex[:12]}"
            target = self.home / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self._session.begin() as session:
                    model = session.get(_ModelRow, name)
                    if model is None:
                        session.add(_ModelRow(name=name, task=task))
                    elif model.task != task:
                        raise RegistryError(
                            f"{name!r} holds {model.task} models; this one is {task}. Choose another --name."
                        )
                    latest = session.scalar(select(func.max(_VersionRow.version)).where(_VersionRow.model_name == name))
                    number = (latest or 0) + 1
                    session.add(_VersionRow(model_name=name, version=number, path=relative, metrics=metrics or {},
                                            description=description))  # fmt: skip
                    session.flush()  # reserves the number: a concurrent writer now fails on the unique key
                    os.replace(staged, target)
                    # Commit happens on leaving the block; if it fails, move the artifact back.
            except IntegrityError:
                if target.exists():
                    os.replace(target, staged)
                continue  # another process took this number: try the next one
            except BaseException:
                if target.exists() and not staged.exists():
                    os.replace(target, staged)
                raise
            _make_read_only(target)
            return self.get(name, str(number))
        raise RegistryError(f"Could not reserve a version number for {name!r}: too many concurrent writers.")

    def promote(self, ref: str, alias: str = DEFAULT_ALIAS) -> ModelVersion:
        """Point `alias` (e.g. 'production') of a model at the version `ref` names."""
        if not NAME_PATTERN.match(alias) or alias.isdigit():
            raise RegistryError(f"Invalid alias {alias!r}: use a word such as 'production' or 'staging'.")
        if alias == "latest" or (alias[:1] in "vV" and alias[1:].isdigit()):
            raise ConflictError(f"{alias!r} is reserved: it names a version. Use a word such as 'staging'.")
        target = self.resolve(ref)
        with self._session.begin() as session:
            row = session.get(_AliasRow, (target.name, alias))
            if row is None:
                session.add(_AliasRow(model_name=target.name, alias=alias, version=target.version))
            else:
                row.version, row.updated_at = target.version, _now()
            session.add(_AliasEventRow(model_name=target.name, alias=alias, version=target.version))
        return self.get(target.name, str(target.version))

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> ModelVersion:
        """Move `alias` back to the version it pointed at before its latest move."""
        parse_ref(name)
        with self._session.begin() as session:
            events = session.scalars(
                select(_AliasEventRow)
                .where(_AliasEventRow.model_name == name, _AliasEventRow.alias == alias, ~_AliasEventRow.rolled_back)
                .order_by(_AliasEventRow.id.desc())
            ).all()
            existing = set(session.scalars(select(_VersionRow.version).where(_VersionRow.model_name == name)))
            if not events:
                raise ConflictError(f"{name}@{alias} has never been set, so there is nothing to roll back.")
            current = events[0]
            previous = next((e for e in events[1:] if e.version != current.version and e.version in existing), None)
            if previous is None:
                raise ConflictError(
                    f"{name}@{alias} points at version {current.version} and has no earlier version to roll back to."
                )
            for e in events:
                if e.id > previous.id:
                    e.rolled_back = True
            row = session.get(_AliasRow, (name, alias))
            assert row is not None  # an event without its alias row would be a bug in promote
            row.version, row.updated_at = previous.version, _now()
            version = previous.version
        return self.get(name, str(version))

    def delete(self, ref: str, force: bool = False) -> list[ModelVersion]:
        """Delete one version (`name@3`) or a whole model (`name`); aliased versions need `force`."""
        name, selector = parse_ref(ref)
        victims = [self.resolve(ref)] if selector else self.versions(name)
        if not victims:
            raise NotFoundError(f"No model named {name!r}. Models: {[m for m in self.names()]}.")
        aliased = [f"{v.ref} ({', '.join(v.aliases)})" for v in victims if v.aliases]
        if aliased and not force:
            raise RegistryError(
                f"Refusing to delete aliased version(s) {', '.join(aliased)}: a server may be using them. "
                "Promote another version first, or pass --force."
            )
        numbers = [v.version for v in victims]
        with self._session.begin() as session:
            for row in session.scalars(select(_AliasRow).where(_AliasRow.model_name == name)):
                if row.version in numbers:
                    session.delete(row)
            for row in session.scalars(select(_VersionRow).where(_VersionRow.model_name == name)):
                if row.version in numbers:
                    session.delete(row)
            session.flush()
            left = session.scalar(select(func.count()).select_from(_VersionRow).where(_VersionRow.model_name == name))
            if not left:
                for row in session.scalars(select(_AliasEventRow).where(_AliasEventRow.model_name == name)):
                    session.delete(row)
                model = session.get(_ModelRow, name)
                if model is not None:
                    session.delete(model)
        # Files go only after the index no longer points at them.
        for version in victims:
            shutil.rmtree(version.path, ignore_errors=True)
        return victims

    # -- API keys -----------------------------------------------------------------------------

    def create_key(self, name: str, scopes: list[str]) -> str:
        """Create an API key and return it; it is shown this once and only its hash is kept."""
        parse_ref(name)
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise RegistryError(f"Unknown scope(s) {unknown or scopes}: use {' and/or '.join(SCOPES)}.")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._session.begin() as session:
                session.add(_ApiKeyRow(name=name, digest=key_digest(key), scopes=",".join(sorted(set(scopes)))))
        except IntegrityError:
            raise ConflictError(
                f"An API key named {name!r} exists already; pick another name, or revoke it first."
            ) from None
        return key

    def revoke_key(self, name: str) -> None:
        with self._session.begin() as session:
            row = session.get(_ApiKeyRow, name)
            if row is None:
                raise NotFoundError(f"No API key named {name!r}. See `tunesmith keys list`.")
            session.delete(row)

    def api_keys(self) -> list[ApiKey]:
        with self._session() as session:
            rows = session.scalars(select(_ApiKeyRow).order_by(_ApiKeyRow.name)).all()
            return [ApiKey(r.name, r.scopes.split(","), r.created_at) for r in rows]

    def key_table(self) -> dict[str, tuple[str, frozenset[str]]]:
        """digest -> (key name, scopes) for every usable key; what a server checks bearer tokens against."""
        with self._session() as session:
            rows = session.scalars(select(_ApiKeyRow)).all()
            return {r.digest: (r.name, frozenset(r.scopes.split(","))) for r in rows}

    # -- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(_ModelRow.name).order_by(_ModelRow.name)))

    def versions(self, name: str) -> list[ModelVersion]:
        with self._session() as session:
            model = session.get(_ModelRow, name)
            if model is None:
                return []
            rows = session.scalars(
                select(_VersionRow).where(_VersionRow.model_name == name).order_by(_VersionRow.version)
            ).all()
            aliases: dict[int, list[str]] = {}
            for a in session.scalars(select(_AliasRow).where(_AliasRow.model_name == name).order_by(_AliasRow.alias)):
                aliases.setdefault(a.version, []).append(a.alias)
            return [self._to_version(r, model.task, aliases.get(r.version, [])) for r in rows]

    def get(self, name: str, selector: str) -> ModelVersion:
        return self.resolve(f"{name}@{selector}")

    def resolve(self, ref: str) -> ModelVersion:
        """Find the version a reference names: 'name' (production alias, else latest), 'name@3', 'name@alias'."""
        name, selector = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = self.names()
            raise NotFoundError(
                f"No model named {name!r} in {self.home}. "
                + (f"Models: {', '.join(known)}." if known else "Train one with `tunesmith train DATA`.")
            )
        if selector is None:
            aliased = [v for v in versions if DEFAULT_ALIAS in v.aliases]
            return aliased[0] if aliased else versions[-1]
        if selector == "latest":
            return versions[-1]
        number = selector[1:] if selector[:1] in "vV" and selector[1:].isdigit() else selector
        if number.isdigit():
            for v in versions:
                if v.version == int(number):
                    return v
            raise NotFoundError(
                f"{name!r} has no version {number}. Versions: {', '.join(str(v.version) for v in versions)}."
            )
        for v in versions:
            if selector in v.aliases:
                return v
        aliases = sorted({a for v in versions for a in v.aliases})
        raise NotFoundError(
            f"{name!r} has no alias {selector!r}. Aliases: {', '.join(aliases) or 'none yet'}; or use a version "
            f"number, or 'latest'. Set one with `tunesmith models promote {name}@VERSION --alias {selector}`."
        )

    def _to_version(self, row: _VersionRow, task: str, aliases: list[str]) -> ModelVersion:
        return ModelVersion(
            name=row.model_name,
            version=row.version,
            path=self.home / row.path,
            task=task,
            created_at=row.created_at,
            metrics=row.metrics or {},
            description=row.description or "",
            aliases=aliases,
        )


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL lets readers (a server) run while a trainer registers; the timeout makes writers queue.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
