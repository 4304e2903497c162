"""On a Dask worker: the embedding model, loaded once for the worker's life by a worker plugin, and what a pool task
needs from the worker it runs on (the model, the number of parse workers).

The flow registers a :class:`ModelPlugin` with the cluster before it submits work (``Client.register_plugin``, once per
model: registering it again is a no-op). Dask runs its ``setup`` on every worker in the cluster and on every worker
that joins later, a nanny's restart of a killed worker included; ``setup`` starts loading the model (and the parse
workers' fork server, which imports Docling) in a thread, so the worker keeps answering the scheduler meanwhile, and
the first pool task waits for it. Tasks reach the model with :func:`worker_model` (``distributed.get_worker()``).

Imported only on Dask workers and by a flow that runs on a cluster: it imports ``distributed`` (docingest[dask]).
"""

from __future__ import annotations

import threading
import time

from distributed import WorkerPlugin, get_worker
from distributed.worker import Worker

from docingest.core.embed import LoadedModel, load_model
from docingest.exceptions import ConfigurationError
from docingest.options import IngestOptions, Isolation

EVENT_TOPIC = "docingest-model"  # each load's outcome, on the scheduler: Client.get_events("docingest-model")
LOAD_TIMEOUT_S = 600.0  # a model load that takes longer is stuck (a hub download on a worker without network)


def plugin_name(name: str, device: str | None, backend: str) -> str:
    """One plugin per model, device and backend: registering the same one again (the next run) changes nothing."""
    return f"docingest-model:{name}:{device or 'auto'}:{backend}"


class ModelPlugin(WorkerPlugin):
    """Loads one embedding model on each worker, once for the worker's life (and starts the parse workers' fork
    server when parsing runs in worker processes). A worker keeps every model registered with it loaded."""

    idempotent = True  # registered by every run: the scheduler keeps the first, workers never load the model twice

    def __init__(self, name: str, device: str | None, backend: str, parse_server: bool) -> None:
        self.model_name, self.device, self.backend, self.parse_server = name, device, backend, parse_server
        self.name = plugin_name(name, device, backend)  # Dask's key for the plugin

    def setup(self, worker: Worker) -> None:
        self._loaded = threading.Event()
        self._error: Exception | None = None
        threading.Thread(target=self._load, args=(worker,), name="docingest-model-load", daemon=True).start()

    def _load(self, worker: Worker) -> None:
        started = time.perf_counter()
        try:
            if self.parse_server:
                from docingest.core.worker import start_server

                start_server()  # the fork server imports Docling while this thread loads the model
            load_model(self.model_name, self.device, self.backend).model  # noqa: B018 - loads the weights
        except Exception as exc:  # noqa: BLE001 - reported to the task that needs the model
            self._error = exc
        finally:
            self._loaded.set()
            worker.log_event(EVENT_TOPIC, {"model": self.model_name, "backend": self.backend, "worker": worker.address,
                                           "seconds": round(time.perf_counter() - started, 2),
                                           "error": str(self._error) if self._error else None})

    def model(self) -> LoadedModel:
        """The loaded model, once the load started by ``setup`` has ended; its error, if it failed."""
        if not self._loaded.wait(LOAD_TIMEOUT_S):
            raise ConfigurationError(f"the Dask worker did not load model {self.model_name!r} in {LOAD_TIMEOUT_S:g} s")
        if isinstance(self._error, ConfigurationError):
            raise self._error
        if self._error is not None:
            raise ConfigurationError(f"the Dask worker cannot load model {self.model_name!r}: {self._error}")
        return load_model(self.model_name, self.device, self.backend)  # the copy this process holds


def model_plugin(model: LoadedModel, options: IngestOptions) -> ModelPlugin:
    """The plugin that loads ``model`` on the workers of a run with ``options``."""
    return ModelPlugin(model.info.name, model.device, model.info.backend,
                       parse_server=options.parse.isolation is Isolation.PROCESS)


def worker_model(model: LoadedModel) -> LoadedModel:
    """The model a pool task encodes with: the one this worker's plugin loaded (waiting for its load to end). Outside a
    worker, or where no plugin was registered for it, ``model`` itself (it loads on first use, once per process)."""
    try:
        worker = get_worker()
    except ValueError:  # not on a Dask worker
        return model
    plugin = worker.plugins.get(plugin_name(model.info.name, model.device, model.info.backend))
    return plugin.model() if isinstance(plugin, ModelPlugin) else model


def worker_options(options: IngestOptions) -> IngestOptions:
    """The run's options as a pool task on this worker applies them: no more parse workers than the worker runs tasks
    at once (each task parses one document at a time, so more would only hold memory)."""
    try:
        threads = get_worker().state.nthreads
    except ValueError:
        return options
    return options if options.workers <= threads else options.model_copy(update={"workers": threads})
