"""`tunesmith doctor`: check that the registry's index and its files agree, and repair what can be repaired.

Problems (the registry is inconsistent): a version row whose folder is missing, outside the home, lacks
`tunesmith.json`, or whose files no longer match the checksum taken at registration; an alias on a
version that does not exist; an export pointer that leads nowhere or to a record naming missing files.
Leftovers (harmless, but they take disk): folders a killed process left — staging folders, version
folders no row points at, superseded or unfinished exports. Kept: models a failed registration kept in
`unregistered/`, and interrupted runs that `--resume` can continue; never removed here.

Repair removes leftovers (a complete artifact found unreferenced is moved to `unregistered/` instead, so
a trained model is never deleted), drops rows whose artifact is gone and aliases that point nowhere, and
removes broken export pointers. A folder a live process is writing (its lock is held) is left alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.artifact import ARTIFACT_META, EXPORT_DIR, EXPORT_META
from tunesmith.errors import TunesmithError
from tunesmith.locks import in_use
from tunesmith.pointers import EXPORTS, LOCK, current, leftovers
from tunesmith.registry import RUNS, STAGING, UNREGISTERED, Registry, artifact_checksum

POINTERS = (EXPORT_DIR, "merged")  # the export kinds an artifact may point at


@dataclass
class Finding:
    what: str  # one line a user can act on
    path: str | None = None
    repaired: bool = False


@dataclass
class DoctorReport:
    problems: list[Finding] = field(default_factory=list)
    leftovers: list[Finding] = field(default_factory=list)
    kept: list[Finding] = field(default_factory=list)
    checked_versions: int = 0

    @property
    def consistent(self) -> bool:
        """No problem is left unrepaired (leftovers and kept folders do not make a registry inconsistent)."""
        return all(f.repaired for f in self.problems)

    @property
    def clean(self) -> bool:
        return self.consistent and all(f.repaired for f in self.leftovers)

    def to_dict(self) -> dict[str, object]:
        def rows(findings: list[Finding]) -> list[dict[str, object]]:
            return [{"what": f.what, "path": f.path, "repaired": f.repaired} for f in findings]

        return {"consistent": self.consistent, "clean": self.clean, "checked_versions": self.checked_versions,
                "problems": rows(self.problems), "leftovers": rows(self.leftovers), "kept": rows(self.kept)}  # fmt: skip


def check(registry: Registry, repair: bool = False, checksums: bool = True) -> DoctorReport:
    """Check the registry at `registry.home`; with `repair`, fix what can be fixed (see the module docstring)."""
    report = DoctorReport()
    home = registry.home
    rows, aliases = registry.index()
    referenced: set[Path] = set()
    live: set[tuple[str, int]] = set()

    for row in rows:
        report.checked_versions += 1
        ref = f"{row.name}@{row.version}"
        try:
            folder = registry.inside(row.path)
        except TunesmithError:
            finding = Finding(f"{ref}: its row points outside the home ({row.path!r}); it is ignored.", row.path)
            report.problems.append(_fix(finding, repair, lambda n=row.name, v=row.version: registry.forget(n, v)))
            continue
        referenced.add(folder)
        if not (folder / ARTIFACT_META).is_file():
            what = "its folder is missing" if not folder.is_dir() else f"its folder has no {ARTIFACT_META}"
            finding = Finding(f"{ref}: {what}; the version cannot be loaded (repair drops its row).", str(folder))
            report.problems.append(_fix(finding, repair, lambda n=row.name, v=row.version: registry.forget(n, v)))
            continue
        live.add((row.name, row.version))
        if checksums and row.checksum is not None and artifact_checksum(folder) != row.checksum:
            report.problems.append(Finding(
                f"{ref}: its files changed since registration (checksum mismatch); retrain or restore them.",
                str(folder)))  # fmt: skip
        _check_exports(folder, ref, report, repair)

    for name, alias, version in aliases:
        if (name, version) not in live:
            finding = Finding(f"{name}@{alias} points at version {version}, which does not exist (repair drops it).")
            report.problems.append(_fix(finding, repair, lambda n=name, a=alias: registry.drop_alias(n, a)))

    models = home / "models"
    for folder in sorted(models.glob("*/*")) if models.is_dir() else []:
        if folder.resolve() not in referenced:
            _leftover_artifact(folder, "a version folder no row points at", home, report, repair)
    staging = home / STAGING
    for folder in sorted(p for p in staging.iterdir() if p.is_dir()) if staging.is_dir() else []:
        if not in_use(folder.with_name(folder.name + ".lock")):
            _leftover_artifact(folder, "a staging folder of a stopped process", home, report, repair)
    for lock in sorted(staging.glob("*.lock")) if staging.is_dir() else []:
        if not lock.with_suffix("").exists() and not in_use(lock):
            report.leftovers.append(_fix(Finding("a stale staging lock", str(lock)), repair, lock.unlink))

    unregistered = home / UNREGISTERED
    for folder in sorted(unregistered.iterdir()) if unregistered.is_dir() else []:
        report.kept.append(Finding(f"kept by a failed registration; register it with `tunesmith models register "
                                   f"{folder}` or delete it", str(folder)))  # fmt: skip
    runs = home / RUNS
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        state = "running" if in_use(folder.with_name(folder.name + ".lock")) else "interrupted; continue it with " \
            f"`tunesmith train ... --name {folder.name} --resume`"
        report.kept.append(Finding(f"training run {folder.name!r}: {state}", str(folder)))
    return report


def _check_exports(folder: Path, ref: str, report: DoctorReport, repair: bool) -> None:
    for kind in POINTERS:
        link = folder / kind
        if link.is_symlink() and current(folder, kind) is None:
            finding = Finding(f"{ref}: its {kind!r} export pointer is broken (repair removes it).", str(link))
            report.problems.append(_fix(finding, repair, link.unlink))
    export = current(folder, EXPORT_DIR)
    if export is not None:
        try:
            record = json.loads((export / EXPORT_META).read_text(encoding="utf-8"))
            missing = [v["file"] for v in record["variants"].values() if not (export / v["file"]).is_file()]
        except (OSError, ValueError, KeyError, TypeError):
            missing = [EXPORT_META]
        if missing:
            report.problems.append(Finding(f"{ref}: its ONNX export lacks {', '.join(missing)}; run `tunesmith "
                                           f"export {ref}` again.", str(export)))  # fmt: skip
    if in_use(folder / EXPORTS / LOCK):
        return  # an export is being written right now: its work folder is not a leftover
    for path in leftovers(folder, POINTERS):
        finding = Finding(f"{ref}: an unfinished or superseded export", str(path))
        report.leftovers.append(_fix(finding, repair, lambda p=path: _remove(p)))


def _leftover_artifact(folder: Path, what: str, home: Path, report: DoctorReport, repair: bool) -> None:
    complete = (folder / ARTIFACT_META).is_file()
    if complete:
        finding = Finding(f"{what}, holding a complete model (repair moves it to {UNREGISTERED}/)", str(folder))
        report.leftovers.append(_fix(finding, repair, lambda: _keep(folder, home)))
    else:
        finding = Finding(f"{what}, incomplete (repair removes it)", str(folder))
        report.leftovers.append(_fix(finding, repair, lambda: _remove(folder)))


def _fix(finding: Finding, repair: bool, action: Callable[[], object]) -> Finding:
    if repair:
        action()
        finding.repaired = True
    return finding


def _keep(folder: Path, home: Path) -> None:
    try:
        name = json.loads((folder / ARTIFACT_META).read_text(encoding="utf-8")).get("name") or "model"
    except ValueError:
        name = "model"
    target = home / UNREGISTERED / f"{name}-{folder.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    for sub in [path, *path.rglob("*")]:  # versions are read-only: give write bits back so rmtree can work
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["DoctorReport", "Finding", "check"]
