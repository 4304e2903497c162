"""Imported once by the parse workers' fork server (Linux): every parse worker then starts as a fork of a process that
already holds Docling, the tokenizer library and our stage code, instead of importing them itself (a spawned worker
spent ~4.5 s of CPU on imports, and workers are replaced every ``recycle_after`` documents and after a crash).

The fork server outlives nothing it should not:

- Its standard streams, which its parse workers inherit, are /dev/null, not the flow run's. A Prefect process worker
  reads the flow-run process's stdout and stderr to their end before it counts the run as finished (before it frees
  its ``--limit`` slot, and before it exits on SIGTERM); a fork server still holding them after the flow-run process
  had exited kept the worker waiting (docs/operations.md, "Signals"). Parse workers send outcomes, not output.
- It ends at once when its owner exits (multiprocessing closes its "alive" pipe): the interpreter's own shutdown of a
  process holding Docling and torch took seconds on a loaded machine, and nothing in it needs flushing.
"""

import atexit
import os
import sys


def _detach_standard_streams() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


# Only in the fork server (`python -c "from multiprocessing.forkserver import main; main(...)"`), never in a process
# that imports this module for another reason.
_IN_FORK_SERVER = sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules
if _IN_FORK_SERVER:
    _detach_standard_streams()

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import docling.datamodel.pipeline_options  # noqa: E402, F401
import docling.document_converter  # noqa: E402, F401
from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer  # noqa: E402, F401
from transformers import AutoTokenizer  # noqa: E402, F401

import docingest.core.chunk  # noqa: E402, F401
import docingest.core.parse  # noqa: E402, F401

if _IN_FORK_SERVER:
    atexit.register(os._exit, 0)  # registered last, so it runs first: skips the slow teardown of the imports above
