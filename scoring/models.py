"""Loading verified models and hot-swapping the ones that serve (champion and shadows).

Runtime choice (``scoring.runtime``):

* ``native`` — XGBoost in-process;
* ``compiled`` — the tl2cgen library, built before the model serves; if building, loading or the
  parity check fails, the native runtime serves instead (logged, ``fraudscore_model_runtime``);
* ``auto`` (default) — the native runtime serves at once; in processes that answer single orders
  (``serve``, ``up``: ``background_compile=True``) the library is built in a background thread and,
  once it passes the parity check, replaces the native one (a hot swap, no request lost). Batch-only
  processes (stream workers, ``fraudscore score``) stay native: batches of 32+ rows use XGBoost's
  batch predict anyway;
* ``sagemaker`` — a SageMaker endpoint (``scoring.sagemaker_endpoint``); the manifest still comes
  from the local registry.

A swap is one attribute assignment: in-flight requests keep the runtime they started with. A model
that fails verification never replaces the one serving; ``last_error`` says why.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from monitoring import metrics
from scoring.artifacts import champion_version, shadow_versions, verify
from scoring.exceptions import ModelArtifactError, ScoringError
from scoring.runtimes.base import ModelRuntime
from scoring.runtimes.native import NativeRuntime
from scoring.scoring_metrics import COMPILED_BUILDS, MODEL_LOAD_SECONDS, RUNTIME_INFO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """How to load models (built from :class:`contracts.config.ScoringSettings`)."""

    runtime: str = "auto"
    cache_dir: Path | None = None
    signing_key: bytes | None = None
    sagemaker_endpoint: str | None = None
    sagemaker_endpoint_url: str | None = None
    sagemaker_region: str | None = None
    sagemaker_timeout_s: float = 0.5
    sagemaker_max_attempts: int = 2
    sagemaker_contributions: bool = True
    batch_threads: int = 1


def load_model(
    models_dir: Path,
    version: str,
    feature_names: list[str] | None = None,
    options: RuntimeOptions | None = None,
    *,
    compile_now: bool | None = None,
) -> ModelRuntime:
    """Verify and load one model version with the configured runtime.

    ``compile_now`` (default: runtime == "compiled") builds the compiled library before returning;
    otherwise ``auto`` returns the native runtime and the caller may compile later.
    """
    opts = options or RuntimeOptions(runtime="native")
    version_dir = models_dir / version
    if not version_dir.is_dir():
        raise ModelArtifactError(f"{version_dir}: no such model version")
    t0 = time.perf_counter()
    manifest = verify(version_dir, feature_names, signing_key=opts.signing_key)
    if opts.runtime == "sagemaker":
        from scoring.runtimes.sagemaker import SageMakerRuntime

        if not opts.sagemaker_endpoint:
            raise ModelArtifactError("scoring.runtime is sagemaker but scoring.sagemaker_endpoint is not set")
        return SageMakerRuntime(
            manifest, opts.sagemaker_endpoint, endpoint_url=opts.sagemaker_endpoint_url, region=opts.sagemaker_region,
            timeout_s=opts.sagemaker_timeout_s, max_attempts=opts.sagemaker_max_attempts,
            contributions=opts.sagemaker_contributions,
        )
    native = NativeRuntime(version_dir, manifest, cache_dir=opts.cache_dir)
    MODEL_LOAD_SECONDS.observe(time.perf_counter() - t0)
    if compile_now is None:
        compile_now = opts.runtime == "compiled"
    if compile_now:
        return compile_or_native(native, manifest.model_sha256, opts)
    return native


def compile_or_native(native: NativeRuntime, model_sha256: str, opts: RuntimeOptions) -> ModelRuntime:
    """The compiled runtime for ``native``'s model, or ``native`` itself when that fails (logged)."""
    from scoring.exceptions import CompiledUnavailable
    from scoring.runtimes.compiled import CompiledRuntime, build_library, library_path

    cache = opts.cache_dir or Path(".fraudscore") / "compiled"
    try:
        try:
            lib = build_library(native, model_sha256, cache)
            runtime = CompiledRuntime(native, lib, batch_threads=opts.batch_threads)
        except CompiledUnavailable as first:
            cached = library_path(cache, model_sha256)
            if not cached.is_file():
                raise
            log.warning("cached library %s is unusable (%s); rebuilding it once", cached.name, first)
            cached.unlink(missing_ok=True)
            lib = build_library(native, model_sha256, cache)
            runtime = CompiledRuntime(native, lib, batch_threads=opts.batch_threads)
    except CompiledUnavailable as exc:
        COMPILED_BUILDS.labels("failed").inc()
        log.warning("model %s: compiled runtime unavailable, serving native XGBoost: %s", native.version, exc)
        return native
    COMPILED_BUILDS.labels("ok").inc()
    return runtime


class ModelHolder:
    """The serving model and shadows.

    ``refresh()`` follows the champion pointer; a bad model never replaces a good one.
    """

    def __init__(
        self,
        models_dir: Path,
        feature_names: list[str],
        pinned: str | None = None,
        options: RuntimeOptions | None = None,
        *,
        shadows: tuple[str, ...] = (),
        background_compile: bool = True,
    ) -> None:
        self.models_dir = models_dir
        self.feature_names = feature_names
        self.pinned = pinned
        self.options = options or RuntimeOptions(runtime="native")
        self.configured_shadows = tuple(shadows)
        self.background_compile = background_compile
        self.current: ModelRuntime | None = None
        self.shadows: dict[str, ModelRuntime] = {}
        self.last_error: str | None = None
        self.shadow_errors: dict[str, str] = {}
        # (version, files' stamp) -> error: a refused version is retried only once its files change
        self._tried: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
        self._lock = threading.Lock()
        self._compiling: set[str] = set()

    # -- loading ---------------------------------------------------------------------------------

    def _load(self, version: str) -> ModelRuntime:
        return load_model(self.models_dir, version, self.feature_names, self.options,
                          compile_now=self.options.runtime == "compiled")

    def _maybe_compile(self, runtime: ModelRuntime, role: str) -> None:
        if self.options.runtime != "auto" or not self.background_compile or not isinstance(runtime, NativeRuntime):
            return
        key = f"{role}:{runtime.version}"
        with self._lock:
            if key in self._compiling:
                return
            self._compiling.add(key)
        threading.Thread(target=self._compile, args=(runtime, role, key), name=f"compile-{runtime.version}",
                         daemon=True).start()

    def _compile(self, native: NativeRuntime, role: str, key: str) -> None:
        try:
            manifest_sha = verify(native.model_path.parent, None, signing_key=self.options.signing_key).model_sha256
            compiled = compile_or_native(native, manifest_sha, self.options)
        except ScoringError as exc:
            log.warning("model %s: not compiling (%s)", native.version, exc)
            return
        finally:
            with self._lock:
                self._compiling.discard(key)
        if compiled is native:
            return
        with self._lock:
            if role == "champion" and self.current is native:
                self.current = compiled
                self._publish_info(compiled)
                log.info("model %s now served by the compiled runtime", native.version)
            elif role == "shadow" and self.shadows.get(native.version) is native:
                self.shadows = {**self.shadows, native.version: compiled}

    def wait_compiled(self, timeout_s: float = 300.0) -> bool:
        """Block until no background compilation is running (tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._compiling:
                    return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _publish_info(model: ModelRuntime) -> None:
        metrics.MODEL_INFO.info({"version": model.version})
        RUNTIME_INFO.info({k: str(v) for k, v in model.describe().items()})

    # -- refresh ---------------------------------------------------------------------------------

    def _stamp(self, version: str) -> tuple[tuple[str, int, int], ...]:
        """(name, size, mtime_ns) of the version's files: changes when a refused version is repaired."""
        vdir = self.models_dir / version
        try:
            return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in vdir.iterdir()
                                if p.is_file() for st in [p.stat()]))
        except OSError:
            return ()

    def wanted(self) -> str | None:
        return self.pinned or champion_version(self.models_dir)

    def refresh(self) -> bool:
        """Load the wanted champion (and shadows) if they changed. True when a new champion now serves."""
        changed = False
        wanted = self.wanted()
        current = self.current
        changed_wanted = wanted is not None and (current is None or current.version != wanted)
        stamp = (wanted, self._stamp(wanted)) if changed_wanted and wanted is not None else None
        if wanted is not None and stamp is not None and stamp not in self._tried:
            try:
                model = self._load(wanted)
            except (ModelArtifactError, ScoringError) as exc:
                self._tried[stamp] = str(exc)
                self.last_error = str(exc)
                metrics.RELOAD_REFUSED.labels("model").inc()
                log.error("refused model %s: %s (still serving %s)", wanted, exc,
                          current.version if current else "no model")
            else:
                with self._lock:
                    self.current = model
                self.last_error = None
                self._publish_info(model)
                log.info("serving model %s (%s)", model.version, model.kind)
                self._maybe_compile(model, "champion")
                changed = True
        self._refresh_shadows()
        return changed

    def _refresh_shadows(self) -> None:
        wanted = list(dict.fromkeys([*self.configured_shadows, *shadow_versions(self.models_dir)]))
        champion = self.current.version if self.current else None
        wanted = [v for v in wanted if v != champion]
        if list(self.shadows) == wanted:
            return
        new: dict[str, ModelRuntime] = {}
        for v in wanted:
            if v in self.shadows:
                new[v] = self.shadows[v]
                continue
            if v in self.shadow_errors:
                continue
            try:
                rt = self._load(v)
            except (ModelArtifactError, ScoringError) as exc:
                self.shadow_errors[v] = str(exc)
                log.error("refused shadow model %s: %s", v, exc)
                continue
            new[v] = rt
            self._maybe_compile(rt, "shadow")
        with self._lock:
            self.shadows = new

    def status(self) -> dict[str, object]:
        cur = self.current
        return {
            "model": cur.describe() if cur else None,
            "model_error": self.last_error,
            "shadows": {v: m.describe() for v, m in self.shadows.items()},
            "shadow_errors": dict(self.shadow_errors),
        }
