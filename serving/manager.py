"""The models a service serves: where each comes from, its loaded version and its batcher.

A source is a repository folder (every model in it, newest version) or one registry model
(`NAME@ALIAS`, `NAME/VERSION`, `models:/...`). Reloading asks the source again; a new version
is loaded and smoke-tested off the event loop, and only then swapped in. A version that fails
leaves the served one untouched.

A model name comes from one source. `waldo serve` refuses to start when two sources hold the
same name (`source_conflicts`); a service started otherwise serves the name from the source that
gave it first, and one that meets a second source later (a folder that gains the name) keeps
what it serves: either way the conflict is logged as one line (`conflict_line`), shown as the
model's error, and the name's reloads are refused until one source is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from httpapi.errors import ApiError, shown
from serving import repository, runtime
from serving.metrics import Metrics
from serving.repository import ModelVersion, RepositoryError
from serving.runtime import LoadedModel, LoadError
from serving.settings import Settings
from serving.versions import Routed, drop_candidate, follow_policy

log = logging.getLogger("waldo.serving")

# The 403 of repository control while it is off: it names the settings that turn it on.
CONTROL_OFF = ("repository control (load, unload, reload) is off on this server: start it with "
               "WALDO_ADMIN_KEY=<token> (callers then present it as a bearer token) or "
               "WALDO_MODEL_CONTROL=explicit to turn it on")


def registry_uri(source: str) -> str | None:
    """`digits@production` / `digits/3` / `models:/digits@production` -> a models:/ URI; a folder -> None."""
    if source.startswith("models:/"):
        return source
    if "@" in source and not Path(source).exists():
        return f"models:/{source}"
    name, _, version = source.partition("/")
    if version.isdigit() and not Path(source).exists():
        return f"models:/{name}/{version}"
    return None


def source_holds(source: str, name: str) -> bool:
    """Whether `source` would serve a model called `name`: a registry source names its one
    model; a folder holds it when it has a complete version (a missing folder holds nothing)."""
    uri = registry_uri(source)
    if uri is None:
        return repository.holds(source, name)
    try:
        return repository.parse_models_uri(uri)[0] == name
    except RepositoryError:
        return False


def _source_names(source: str) -> list[str]:
    uri = registry_uri(source)
    try:
        return [repository.parse_models_uri(uri)[0]] if uri is not None else list(repository.scan(source))
    except RepositoryError:  # a missing folder or a malformed URI: reported as such elsewhere
        return []


def conflict_line(name: str, first: str, second: str) -> str:
    """The one line that says model `name` comes from two sources and how to resolve it."""
    def where(source: str) -> str:
        if registry_uri(source) is None:
            return f"the folder {source!r} ({os.path.join(source, name)})"
        return f"the registry model {source!r}"

    return (f"model {name!r} comes from two sources, {where(first)} and {where(second)}: serve it "
            "from one of them (drop the other from --models / WALDO_MODELS), or export one under "
            "another name (waldo export --name)")


def source_conflicts(sources: list[str]) -> dict[str, str]:
    """Each model name that more than one of `sources` holds -> its `conflict_line` (the first
    two sources that hold it, in order). A source listed twice is one source."""
    first: dict[str, str] = {}
    conflicts: dict[str, str] = {}
    for source in dict.fromkeys(sources):
        for name in _source_names(source):
            if name in first and name not in conflicts:
                conflicts[name] = conflict_line(name, first[name], source)
            first.setdefault(name, source)
    return conflicts


def _local_store(uri: str | None) -> str | None:
    """The folder of a local MLflow store (`sqlite:///...`, `file://...`), else None."""
    for scheme in ("sqlite:///", "file://"):
        if uri and uri.startswith(scheme):
            return os.path.dirname(os.path.abspath(uri.removeprefix(scheme)))
    return None


def _alias(source: str) -> str | None:
    uri = registry_uri(source)
    try:
        return repository.parse_models_uri(uri)[1] if uri is not None else None
    except RepositoryError:
        return None


class ServedModel(Routed):
    """A model the service knows: its inference lifecycle (with a rollout's candidate beside
    it: serving.versions), where it comes from (`source`, as configured) and whether an
    operator unloaded it."""

    def __init__(self, name: str, source: str, manager: ModelManager):
        super().__init__(name, manager.settings, manager.metrics, manager.decode_slots)
        self.source = source
        self.alias = _alias(source)  # NAME@ALIAS: the alias whose rollout policy applies
        self.unloaded = False  # by the repository extension's unload; the poll leaves it so
        self.lock = asyncio.Lock()


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        # Requests decoding large images at once, service-wide (bounds decoding's memory).
        self.decode_slots = asyncio.Semaphore(settings.max_concurrent_decodes)
        self.json_slots = asyncio.Semaphore(settings.max_concurrent_json)  # serving.inputs.parse_json_body
        self.models: dict[str, ServedModel] = {}
        self.source_errors: dict[str, str] = {}  # folder sources that yield nothing, and why
        # Model names that two sources hold -> the line that says so: the name stays with the
        # source that gave it first, and its reloads are refused until one source is left.
        self.conflicts: dict[str, str] = {}
        self._poller: asyncio.Task | None = None
        self._folders = self._server_paths()

    # -- what callers may see -------------------------------------------------------------
    def _server_paths(self) -> list[tuple[str, str]]:
        """(absolute path, what callers see instead), longest first: each folder source, the
        registry cache and a local MLflow store by their last component, and the working
        directory as `.` (symlinks resolved and not)."""
        s = self.settings
        folders = [f for f in s.models if registry_uri(f) is None] + [s.cache_dir]
        store = _local_store(s.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        if store is not None:
            folders.append(store)
        pairs = {}
        for folder in folders:
            for form in (os.path.abspath(folder), str(Path(folder).resolve())):
                pairs[form] = Path(form).name
        pairs.setdefault(os.getcwd(), ".")
        return sorted(((path, alias) for path, alias in pairs.items() if path.strip(os.sep) and alias),
                      key=lambda pair: -len(pair[0]))

    def public(self, text: str) -> str:
        """`text` (an error, a source) without the server's absolute paths: a folder this service
        reads is named by its last component (`/srv/models/cnn/2/model.onnx` -> `models/cnn/2/
        model.onnx`), so callers learn which file failed but not where the server keeps it."""
        for path, alias in self._folders:
            text = text.replace(path, alias)
        return text

    def require_control(self) -> None:
        """403 unless repository control is on (`Settings.repository_control`); HTTP and gRPC
        both ask before they check the bearer token."""
        if not self.settings.repository_control:
            raise ApiError(403, "model_control_off", CONTROL_OFF)

    # -- finding versions ---------------------------------------------------------------
    def _resolve(self, source: str) -> dict[str, ModelVersion]:
        uri = registry_uri(source)
        if uri is not None:
            return repository.resolve(uri, cache=self.settings.cache_dir,
                                      tracking_uri=self.settings.tracking_uri)
        return repository.scan(source)

    def _newest(self, served: ServedModel) -> ModelVersion:
        found = self._resolve(served.source)
        if served.name not in found:
            raise RepositoryError(f"{served.source} no longer holds a model named {served.name!r}")
        return found[served.name]

    def _rival(self, served: ServedModel) -> str | None:
        """Another configured source that holds `served`'s name too, if any."""
        return next((source for source in self.settings.models
                     if source != served.source and source_holds(source, served.name)), None)

    def _conflict(self, name: str, first: str, second: str, outcome: str) -> str:
        """Note that `second` holds `name` too while `first` serves it: log the line (once per
        conflict, at ERROR) with `outcome`, and show it as the model's error while it serves."""
        line = conflict_line(name, first, second)
        if self.conflicts.get(name) != line:
            log.error("%s; %s", line, outcome)
            self.conflicts[name] = line
        served = self.models.get(name)
        if served is not None and served.model is not None:
            served.error = self.public(line)
        return line

    def _no_conflict(self, served: ServedModel) -> None:
        if self.conflicts.pop(served.name, None) is not None:
            log.info("model %s comes from one source again, %s", served.name, served.source)
            if served.model is not None:
                served.error = None

    def _load(self, version: ModelVersion, source: str) -> LoadedModel:
        return runtime.load(version, self.settings, source)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        for source in self.settings.models:
            await self._add_source(source)
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="model-poller")

    async def _add_source(self, source: str) -> None:
        """Load every model `source` holds. A registry model is known by name even before it
        can be fetched, so that reload and the poll can bring it in later."""
        self.source_errors.pop(source, None)
        uri = registry_uri(source)
        if uri is not None:
            try:
                name = repository.parse_models_uri(uri)[0]
            except RepositoryError as exc:
                self.source_errors[source] = self.public(str(exc))
                log.error("model source %s: %s", source, exc)
                return
            served = self.models.setdefault(name, ServedModel(name, source, self))
            if served.source != source:  # never asked: the name is the other source's
                self._conflict(name, served.source, source, f"serving it from {served.source} alone")
                return
        try:
            found = await asyncio.to_thread(self._resolve, source)
        except RepositoryError as exc:
            if uri is not None:
                self.models[name].error = self.public(str(exc))
            else:
                self.source_errors[source] = self.public(str(exc))
            log.error("model source %s: %s", source, exc)
            return
        if not found:
            self.source_errors[source] = self.public(
                f"model repository {source!r} holds no complete model version")
        for name, version in found.items():
            served = self.models.setdefault(name, ServedModel(name, source, self))
            if served.source != source:
                self._conflict(name, served.source, source, f"serving it from {served.source} alone")
                continue
            if served.model is not None or served.unloaded:  # newer versions come through reload
                continue
            try:
                model = await asyncio.to_thread(self._load, version, source)
            except LoadError as exc:
                served.error = self.public(str(exc))
                log.error("cannot serve %s: %s", name, exc)
                continue
            self._install(served, model)
            await follow_policy(self, served)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for served in self.models.values():
            if served.rollout is not None:
                await served.rollout.candidate.batcher.stop()
            if served.batcher is not None:
                await served.batcher.stop()

    def served(self, name: str) -> ServedModel:
        """The model called `name`; 404 naming the served ones if there is none."""
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ApiError(404, "unknown_model", f"unknown model {shown(name)}; served models: {known}")
        return served

    async def load_or_refuse(self, name: str) -> None:
        """`load` for the repository extension (HTTP and gRPC): 404 for a name no source holds,
        400 when the version fails (what is served stays, and the message says so)."""
        try:
            await self.load(name)
        except KeyError:
            raise ApiError(404, "unknown_model",
                           f"no model source holds a model named {shown(name)}") from None
        except (LoadError, RepositoryError) as exc:
            served = self.models.get(name)
            still = (f"v{served.model.version} is still served" if served and served.model
                     else "nothing is served")
            raise ApiError(400, "load_failed", f"{self.public(str(exc))} ({still})") from None

    @property
    def not_ready(self) -> list[str]:
        """The models that do not serve now, an unloaded one included."""
        return [name for name, s in self.models.items() if s.model is None]

    @property
    def ready(self) -> bool:
        """Every model the service was started to serve is loaded (an operator's unload makes
        the server not ready: its traffic should go elsewhere), and every source gave one."""
        return not self.source_errors and bool(self.models) and not self.not_ready

    def _install(self, served: ServedModel, model: LoadedModel) -> None:
        served.error, served.unloaded = None, False
        served.start_batcher(model, on_depth=self.metrics.queue_depth.labels(served.name).set)
        self.metrics.version.labels(served.name).set(float(model.version) if model.version.isdigit() else 0)
        log.info("serving %s v%s on %s", served.name, model.version, ", ".join(model.providers))

    async def reload(self, name: str) -> dict:
        """Load the source's current version of `name` if it differs from the one served.

        Raises LoadError/RepositoryError with the reason; the served model stays as it was.
        """
        served = self.models[name]
        async with served.lock:
            old = served.model.version if served.model else None
            try:
                rival = await asyncio.to_thread(self._rival, served)
                if rival is not None:  # found now: what is served stays as it is
                    stays = f"v{old} from {served.source} stays served" if old else "nothing is served"
                    raise RepositoryError(self._conflict(name, served.source, rival, stays))
                self._no_conflict(served)
                version = await asyncio.to_thread(self._newest, served)
                if version.version == old:
                    self.metrics.reloads.labels(name, "unchanged").inc()
                    await follow_policy(self, served)
                    return self._reloaded(served, old, changed=False)
                model = await asyncio.to_thread(self._load, version, served.source)
            except (LoadError, RepositoryError) as exc:
                self.metrics.reloads.labels(name, "failed").inc()
                if served.model is None:
                    served.error = self.public(str(exc))
                raise
            self._install(served, model)
            self.metrics.reloads.labels(name, "loaded").inc()
            await follow_policy(self, served)
            return self._reloaded(served, old, changed=True)

    @staticmethod
    def _reloaded(served: ServedModel, old: str | None, changed: bool) -> dict:
        answer = {"name": served.name, "version": served.version, "previous_version": old,
                  "changed": changed}
        if served.rollout is not None:  # a rollout's candidate is served beside it
            answer["candidate"] = served.rollout.candidate.version
        return answer

    async def load(self, name: str) -> dict:
        """Serve `name` again after an unload, or for the first time if a folder source now
        holds it; otherwise as `reload`. Raises KeyError for a name no source holds."""
        if name not in self.models:
            for source in self.settings.models:
                if registry_uri(source) is None:
                    await self._add_source(source)
            if name not in self.models:
                raise KeyError(name)
            served = self.models[name]
            if served.model is None:
                raise LoadError(served.error or f"{name} did not load")
            return {"name": name, "version": served.model.version, "previous_version": None,
                    "changed": True}
        return await self.reload(name)

    async def unload(self, name: str) -> None:
        """Stop serving `name` (requests get 503) until it is loaded again; the poll leaves it."""
        served = self.models[name]
        async with served.lock:
            served.unloaded, served.model = True, None
            await drop_candidate(served)
            served.error = "unloaded through the model repository API; load it to serve it again"
            self.metrics.version.labels(name).set(0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            for source in list(self.source_errors):  # a folder that was missing or empty
                await self._add_source(source)
            for name in [n for n, s in self.models.items() if not s.unloaded]:
                try:
                    result = await self.reload(name)
                    if result["changed"]:
                        log.info("poll: %s moved to v%s", name, result["version"])
                except (LoadError, RepositoryError) as exc:
                    log.warning("poll: keeping %s as it is: %s", name, exc)
