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
import json
import os
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
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tunesmith.artifact import read_meta, task_of
from tunesmith.errors import (
    ConflictError,
    InvalidNameError,
    LockedError,
    NotFoundError,
    RegistryError,
    TunesmithError,
)
from tunesmith.locks import hold, holder
from tunesmith.paths import check_name, confine

DEFAULT_ALIAS = "production"
# Folders under the home that hold something other than registered versions.
STAGING, RUNS, UNREGISTERED = "staging", "runs", "unregistered"


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
    # The highest version number ever given under this name. The row outlives its versions, so a deleted
    # version's number is never given again (a server serving `name@3` must not silently get another 3).
    last_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


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
    # SHA-256 over the artifact's files (see `artifact_checksum`); `doctor` checks it. None for versions
    # registered before checksums were kept.
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)


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


class _GateRow(_Base):
    """Every regression gate run (`tunesmith gate`): a promotion to production looks for a passing one."""

    __tablename__ = "gates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    against: Mapped[int] = mapped_column(Integer)
    passed: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _CanaryRow(_Base):
    """A model's traffic split: `share` of its requests (sticky per caller) go to `alias`, or a copy of all of
    them in shadow mode. Servers re-read it as they re-read aliases."""

    __tablename__ = "canaries"
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64))
    share: Mapped[float] = mapped_column(Float)
    mode: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _CanaryEventRow(_Base):
    """Starts, ends and automatic rollbacks of traffic splits, for `tunesmith canary status`."""

    __tablename__ = "canary_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _ApiKeyRow(_Base):
    """API keys for the server. Only a SHA-256 of each key is stored: keys are 256-bit random, so a fast
    hash is enough (no dictionary to attack), and a leaked database does not leak usable keys."""

    __tablename__ = "api_keys"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


SCOPES = ("read", "feedback", "admin")  # lowest first: each scope may do what those before it may
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
    checksum: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class IndexEntry:
    """One version row as the database holds it."""

    name: str
    version: int
    path: str  # as stored: relative to the home, not yet checked
    checksum: str | None
    task: str


# Export folders live inside a version folder but are written after registration (ONNX, the merged LLM);
# they are not part of what the checksum covers.
EXPORT_PARTS = ("onnx", "merged", "exports")


def is_export_file(relative: Path) -> bool:
    """Whether a path inside an artifact belongs to an export (or an export's leftover work folder)."""
    first = relative.parts[0] if relative.parts else ""
    return first in EXPORT_PARTS or first.startswith(tuple(f".{p}-" for p in EXPORT_PARTS))


def artifact_checksum(root: Path) -> str:
    """SHA-256 over the relative path and bytes of every file of an artifact, exports excluded."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(root)
        if is_export_file(relative):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _make_read_only(root: Path) -> None:
    # Versions are immutable: files lose their write bits (folders keep theirs so delete still works).
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split 'name', 'name@3', 'name@v3' or 'name@alias' into (name, selector)."""
    name, _, selector = ref.partition("@")
    check_name(name, "model name")
    return name, selector or None


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if alias.isdigit():
        raise InvalidNameError(f"Invalid alias {alias!r}: use a word such as 'production' or 'staging'.")
    if alias == "latest" or (alias[:1] in "vV" and alias[1:].isdigit()):
        raise ConflictError(f"{alias!r} is reserved: it names a version. Use a word such as 'staging'.")
    return alias


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
        _add_missing_columns(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def inside(self, path: str | Path) -> Path:
        """`path` (relative to the home, or absolute) resolved, if it is inside the home; else an error."""
        return confine(self.home, path)

    def run_dir(self, name: str) -> Path:
        """The folder of checkpoints of the training run `name`."""
        return self.inside(Path(RUNS) / check_name(name, "run name"))

    @contextmanager
    def run_lock(self, name: str) -> Iterator[Path]:
        """Hold `runs/NAME.lock` for a training run: a second run of the same name is refused instead of
        deleting the first one's checkpoints. The OS drops the lock when the process dies, however it dies."""
        run_dir = self.run_dir(name)
        lock_file = run_dir.with_name(run_dir.name + ".lock")
        with hold(lock_file, wait=False) as held:
            if not held:
                raise LockedError(
                    f"Another training run named {name!r} is in progress ({holder(lock_file)}). Wait for it to "
                    "finish, or train under another --name."
                )
            yield run_dir

    # -- writing ------------------------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder to write an artifact into; removed if the block fails. Its lock (`<folder>.lock`) is
        held for the block, so `doctor` leaves a live writer's folder alone and removes a killed one's."""
        path = self.home / STAGING / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        lock_file = path.with_name(path.name + ".lock")
        try:
            with hold(lock_file):
                yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            lock_file.unlink(missing_ok=True)

    def register(
        self,
        name: str,
        staged: Path,
        task: str,
        metrics: dict[str, Any] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Move a complete staged artifact into the registry as the next version of `name`.

        If registration fails (a locked database, a full disk, a task mismatch), the artifact is not lost: it is
        moved to `<home>/unregistered/` and the error says how to register it from there."""
        check_name(name, "model name")
        staged = Path(staged)
        if not staged.is_dir():
            raise RegistryError(f"Nothing to register: {staged} is not a folder.")
        try:
            checksum = artifact_checksum(staged)
            return self._register(name, staged, task, metrics or {}, description, checksum)
        except BaseException as exc:
            if not staged.is_dir():
                raise
            kept = self._keep_unregistered(staged, name)
            if not isinstance(exc, Exception):  # Ctrl-C or a kill signal: keep the artifact, stop as asked
                raise
            raise RegistryError(
                f"Could not register {name!r}: {exc} The trained model is kept in {kept}; register it with "
                f"`tunesmith models register {kept} --name NAME`."
            ) from exc

    def _register(self, name: str, staged: Path, task: str, metrics: dict[str, Any], description: str,
                  checksum: str) -> ModelVersion:  # fmt: skip
        for _attempt in range(20):
            relative = f"models/{name}/v-{uuid.uuid4().hex[:12]}"
            target = self.inside(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self._session.begin() as session:
                    model = session.get(_ModelRow, name)
                    latest = session.scalar(select(func.max(_VersionRow.version)).where(_VersionRow.model_name == name))
                    if model is None:
                        model = _ModelRow(name=name, task=task)
                        session.add(model)
                    elif model.task != task:
                        if latest is not None:
                            raise RegistryError(
                                f"{name!r} holds {model.task} models; this one is {task}. Choose another --name."
                            )
                        model.task = task  # every version was deleted: the name is free for another task
                    number = max(latest or 0, model.last_version or 0) + 1
                    model.last_version = number
                    session.add(_VersionRow(model_name=name, version=number, path=relative, metrics=metrics,
                                            description=description, checksum=checksum))  # fmt: skip
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

    def _keep_unregistered(self, staged: Path, name: str) -> Path:
        kept = self.inside(Path(UNREGISTERED) / f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}")
        kept.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, kept)
        except OSError:
            return staged  # cannot even rename (e.g. the disk is gone): it stays where it is
        return kept

    def register_folder(self, folder: str | Path, name: str | None = None) -> ModelVersion:
        """Register a complete artifact folder (one kept by a failed registration, or a copied version) as the
        next version of `name` (default: the name it was trained under). The folder is copied, not moved."""
        import json

        folder = Path(folder).expanduser().resolve()
        meta_file = folder / "tunesmith.json"
        if not meta_file.is_file():
            raise RegistryError(f"{folder} is not a tunesmith model folder: it has no tunesmith.json.")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RegistryError(f"{meta_file} is not valid JSON ({exc}); the folder is damaged.") from None
        name = check_name(name or meta.get("name") or "", "model name")
        with self.staging() as staged:
            shutil.copytree(folder, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*EXPORT_PARTS))
            for path in [staged, *staged.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            version = self.register(name, staged, task_of(staged), meta.get("metrics", {}))
        unregistered = self.home / UNREGISTERED
        if folder.is_relative_to(unregistered.resolve()) and folder != unregistered.resolve():
            shutil.rmtree(folder, ignore_errors=True)  # it was ours to keep; it is registered now
        return version

    def promote(self, ref: str, alias: str = DEFAULT_ALIAS) -> ModelVersion:
        """Point `alias` (e.g. 'production') of a model at the version `ref` names."""
        check_alias(alias)
        target = self.resolve(ref)
        with self._session.begin() as session:
            row = session.get(_AliasRow, (target.name, alias))
            if row is None:
                session.add(_AliasRow(model_name=target.name, alias=alias, version=target.version))
            else:
                row.version, row.updated_at = target.version, _now()
            session.add(_AliasEventRow(model_name=target.name, alias=alias, version=target.version))
        return self.get(target.name, str(target.version))

    def start_canary(self, name: str, alias: str = "candidate", share: float = 0.1, mode: str = "canary") -> dict[str, Any]:
        """Send `share` of `name`'s traffic to `alias` (`mode` canary), or a copy of all of it (`mode` shadow)."""
        check_alias(alias)
        target = self.resolve(f"{name}@{alias}")  # the alias must exist now
        if not 0 < share <= 1:
            raise RegistryError(f"share {share} must be above 0 and at most 1 (0.1 sends a tenth of the traffic).")
        if mode not in ("canary", "shadow"):
            raise RegistryError(f"mode {mode!r}: use canary or shadow.")
        with self._session.begin() as session:
            session.merge(_CanaryRow(model_name=target.name, alias=alias, share=share, mode=mode, started_at=_now()))
        return {"alias": alias, "share": share, "mode": mode, "version": target.version}

    def stop_canary(self, name: str, event: str = "ended", detail: str = "") -> bool:
        """End `name`'s traffic split (`event` "rolled_back" with why, when a server ends it); False when there
        was none."""
        with self._session.begin() as session:
            row = session.get(_CanaryRow, name)
            if row is None:
                return False
            session.delete(row)
            session.add(_CanaryEventRow(model_name=name, event=event, detail=detail or f"{row.mode} of @{row.alias}"))
        return True

    def canary_events(self, name: str, limit: int = 5) -> list[dict[str, Any]]:
        """The latest ends and rollbacks of `name`'s splits, newest first."""
        with self._session() as session:
            rows = session.scalars(select(_CanaryEventRow).where(_CanaryEventRow.model_name == name)
                                   .order_by(_CanaryEventRow.id.desc()).limit(limit)).all()  # fmt: skip
            return [{"event": r.event, "detail": r.detail, "at": r.created_at} for r in rows]

    def canary_table(self) -> dict[str, dict[str, Any]]:
        """model name -> {alias, share, mode, started_at} for every split in force."""
        with self._session() as session:
            return {r.model_name: {"alias": r.alias, "share": r.share, "mode": r.mode, "started_at": r.started_at}
                    for r in session.scalars(select(_CanaryRow))}  # fmt: skip

    def record_gate(self, name: str, version: int, against: int, passed: bool, report: dict[str, Any]) -> None:
        """Keep a gate's verdict (and its report) for `promote` to find."""
        with self._session.begin() as session:
            session.add(_GateRow(model_name=name, version=version, against=against, passed=passed,
                                 report=json.dumps(report, default=str)))  # fmt: skip

    def gate_passed(self, name: str, version: int, against: int) -> bool:
        """Whether `version` passed a gate against version `against` (the latest verdict counts)."""
        with self._session() as session:
            row = session.scalars(select(_GateRow).where(_GateRow.model_name == name, _GateRow.version == version,
                                                         _GateRow.against == against)
                                  .order_by(_GateRow.id.desc())).first()  # fmt: skip
        return bool(row and row.passed)

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> ModelVersion:
        """Move `alias` back to the version it pointed at before its latest move."""
        parse_ref(name)
        check_name(alias, "alias")
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

    @staticmethod
    def _built_on(version: ModelVersion, parent: ModelVersion) -> bool:
        """Whether `version` (a LoRA retrain's adapter) loads `parent`'s weights as its base model."""
        try:
            base = read_meta(version.path).get("base_model")
        except TunesmithError:
            return False
        return bool(base) and Path(str(base)).resolve().is_relative_to(Path(parent.path).resolve())

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
        dependants = [f"{v.ref} (an adapter over {victim.ref})" for v in self.versions(name) if v.version not in numbers
                      for victim in victims if self._built_on(v, victim)]  # fmt: skip
        if dependants and not force:
            raise RegistryError(f"Refusing to delete: {', '.join(dependants)} loads its weights. Delete the adapter "
                                "first, or pass --force (it then no longer loads).")  # fmt: skip
        with self._session.begin() as session:
            for row in session.scalars(select(_AliasRow).where(_AliasRow.model_name == name)):
                if row.version in numbers:
                    session.delete(row)
            for version_row in session.scalars(select(_VersionRow).where(_VersionRow.model_name == name)):
                if version_row.version in numbers:
                    session.delete(version_row)
            session.flush()
            left = session.scalar(select(func.count()).select_from(_VersionRow).where(_VersionRow.model_name == name))
            if not left:
                for event in session.scalars(select(_AliasEventRow).where(_AliasEventRow.model_name == name)):
                    session.delete(event)
                # The model row stays: it holds the last version number given, which is never given again.
        # Files go only after the index no longer points at them, and only inside the home.
        for version in victims:
            shutil.rmtree(self.inside(version.path), ignore_errors=True)
        return victims

    # -- the raw index, for `doctor` -------------------------------------------------------------

    def index(self) -> tuple[list[IndexEntry], list[tuple[str, str, int]]]:
        """Every version row as stored (paths unchecked) and every alias as (model, alias, version)."""
        with self._session() as session:
            tasks = {m.name: m.task for m in session.scalars(select(_ModelRow))}
            rows = [IndexEntry(r.model_name, r.version, r.path, r.checksum, tasks.get(r.model_name, ""))
                    for r in session.scalars(select(_VersionRow).order_by(_VersionRow.model_name, _VersionRow.version))]  # fmt: skip
            aliases = [(a.model_name, a.alias, a.version) for a in session.scalars(select(_AliasRow))]
        return rows, aliases

    def forget(self, name: str, version: int) -> None:
        """Drop the row of a version whose artifact is gone, and the aliases on it (its number stays used)."""
        with self._session.begin() as session:
            for row in session.scalars(select(_AliasRow).where(_AliasRow.model_name == name, _AliasRow.version == version)):
                session.delete(row)
            for version_row in session.scalars(select(_VersionRow).where(_VersionRow.model_name == name,
                                                                          _VersionRow.version == version)):  # fmt: skip
                session.delete(version_row)

    def drop_alias(self, name: str, alias: str) -> None:
        with self._session.begin() as session:
            row = session.get(_AliasRow, (name, alias))
            if row is not None:
                session.delete(row)

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
        """Names with at least one version."""
        with self._session() as session:
            return list(session.scalars(select(_VersionRow.model_name).distinct().order_by(_VersionRow.model_name)))

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
            path=self._artifact_path(row),
            task=task,
            created_at=row.created_at,
            metrics=row.metrics or {},
            description=row.description or "",
            aliases=aliases,
            checksum=row.checksum,
        )

    def _artifact_path(self, row: _VersionRow) -> Path:
        try:
            return self.inside(row.path)
        except TunesmithError:
            raise RegistryError(
                f"The registry's row for {row.model_name}@{row.version} points outside {self.home} ({row.path!r}); "
                "the database was edited or damaged. Run `tunesmith doctor`."
            ) from None


def _add_missing_columns(engine: Any) -> None:
    """Add columns newer code defines to tables an older registry created (nullable, so old rows stay valid).
    Enough for additive changes; a rename or a type change would need a real migration tool (Alembic)."""
    inspector = inspect(engine)
    for table in _Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL lets readers (a server) run while a trainer registers; the timeout makes writers queue.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
